"""When assets run by themselves: the declarative automation conditions the assets carry, and
the concurrency pool of the training assets. The automation condition sensor in
`dagster_project` evaluates them; sensors remain only for events outside Dagster."""

from dagster import AutomationCondition

WEEKLY_CRON = "0 3 * * 0"  # Sundays 03:00, when no one is curating

# Each version once: a partition of `dataset_versions` that appears after the automation sensor
# started is requested on the tick that sees it, and never again (a failed run is not retried,
# a version trained before, by the demo or by hand, is not missing). A partition that was already
# missing when the sensor first ran is left to whoever wants it trained.
TRAIN_NEW_VERSION = AutomationCondition.on_missing().with_label("train_each_new_version_once")

# A report follows its model: requested when the model of its version is updated (or in the same
# run when both are missing and the model is requested).
FOLLOW_UPSTREAM = AutomationCondition.eager()

# The weekly snapshot runs whatever the crops did: curators' corrections change a version without
# any crop asset running (the stock on_cron waits for every dependency to update since the tick).
# An unchanged snapshot keeps its id, so it adds no partition and trains nothing.
WEEKLY_SNAPSHOT = (
    AutomationCondition.on_cron(WEEKLY_CRON)
    .without(AutomationCondition.all_deps_updated_since_cron(WEEKLY_CRON))
    .with_label(f"weekly_snapshot({WEEKLY_CRON})")
)

# One training at a time: the limit of this pool is set in the instance's dagster.yaml
# (`concurrency: pools: default_limit`, written by `ferlab.demo.prepare_dagster_home`).
TRAINING_POOL = "training"
# On Kubernetes (k8s_job_executor, deploy/k8s) a training step's pod asks for a GPU and tolerates
# the GPU nodes' taint; elsewhere the tag is ignored and training takes a GPU when there is one.
TRAINING_STEP_TAGS = {
    "dagster-k8s/config": {
        "container_config": {
            "resources": {"requests": {"cpu": "4", "memory": "16Gi"}, "limits": {"nvidia.com/gpu": "1"}}
        },
        "pod_spec_config": {
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}]
        },
    }
}
