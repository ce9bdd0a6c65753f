"""Wiring only: assets and their checks are discovered from the `assets` package (adding an
asset is adding it to a module there); jobs, sensors and resources come from their modules."""

from dagster import Definitions, load_asset_checks_from_package_module, load_assets_from_package_module

import assets
from assets.resources import DetectorResource, LabelStudioResource, SourcesResource, WarehouseResource
from dagster_project.jobs import jobs
from dagster_project.sensors import sensors

defs = Definitions(
    assets=load_assets_from_package_module(assets),
    asset_checks=load_asset_checks_from_package_module(assets),
    jobs=jobs,
    sensors=sensors,
    resources={
        "warehouse": WarehouseResource(),
        "sources": SourcesResource(),
        "detector": DetectorResource(),
        # URL and key from $LABEL_STUDIO_URL / $LABEL_STUDIO_API_KEY when the client is made: the key is
        # never in a run's stored configuration, and without one the sensor skips instead of failing.
        "labelstudio": LabelStudioResource(),
    },
)
