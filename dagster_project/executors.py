"""Where a run's steps execute. One machine (the default): Dagster's own multiprocess executor.
Several machines: `$FERLAB_DASK_SCHEDULER` (e.g. `tcp://10.0.0.5:8786`, read when a run starts) or
the run's `execution: config: dask_scheduler:` sends the steps of the ingest + auto-labeling jobs to
the workers of an existing dask cluster (`dask scheduler`, `dask worker`): each partition is one
Dagster run, its steps land on whichever worker is free, so a backfill of many subjects or batches
spreads over every worker.

dagster-dask's own `dask_executor` (0.29.27) cannot serve here, so this executor runs its step
function (`query_on_dask_worker`) its own way: dagster-dask names a step's dask task `<job>.<step>`,
so two runs of one job at once (two partitions, the normal case here) share that key and dask runs
the step once for both while the second run reports success (dagster-io/dagster#21418): the run id
is in the key here. It passes a DagsterRun among the task's arguments, which dask walks as a tuple
and which, for a partitioned run, holds a record that refuses iteration: here they travel in one
object. It makes every step a dask dependency of the steps before it, so a lost worker makes dask
recompute the finished steps whose results it held: here a step is submitted once those before it
have succeeded (and never after one failed), and a scheduler that does not answer, or a step that
lost its workers, is one error line.

A worker killed while running a step: dask runs the step again on another worker (up to the
scheduler's `distributed.scheduler.allowed-failures`, 3); the assets are idempotent (content-hash
ids, auto-labeling skips the images finished), so the second attempt adds only what the first
had not stored. Beyond that the run fails, and re-executing it from failure redoes the lost steps.
The assets' RetryPolicy is Dagster's in-process retry loop, which this executor does not run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from dagster import (
    DagsterEvent,
    Executor,
    Field,
    InitExecutorContext,
    Int,
    IntSource,
    Noneable,
    StringSource,
    executor,
    multiple_process_executor_requirements,
    multiprocess_executor,
)

if TYPE_CHECKING:
    from dagster._core.execution.context.system import PlanOrchestrationContext
    from dagster._core.execution.plan.plan import ExecutionPlan

SCHEDULER_ENV = "FERLAB_DASK_SCHEDULER"
CONNECT_TIMEOUT_S = 30


class DaskStepsError(RuntimeError):
    """The dask cluster could not run some steps (no scheduler, workers lost): the message says
    which and what to do."""


@dataclass(frozen=True)
class _StepCall:
    """What a worker needs to run one step, in one object: dask walks the tuples among a task's
    arguments looking for futures, and a DagsterRun (a NamedTuple) of a partitioned run holds a
    record that refuses iteration (dagster-dask passes them loose and fails on such runs)."""

    recon_job: Any
    run: Any
    run_config: Any
    step_key: str
    instance_ref: Any
    known_state: Any


def _run_step_on_worker(call: _StepCall) -> str:
    """On a dask worker: the step (dagster-dask's `query_on_dask_worker`); its events serialized
    (dask's size estimate walks a result's tuples too, and the events hold such records)."""
    from dagster import serialize_value
    from dagster_dask.executor import query_on_dask_worker

    events = query_on_dask_worker(
        [],
        call.recon_job,
        call.run,
        call.run_config,
        [call.step_key],
        call.instance_ref,
        call.known_state,
    )
    return serialize_value(list(events))


class RunScopedDaskExecutor(Executor):
    """Each step of the plan as a task of an existing dask cluster, keyed by run, submitted once
    the steps it depends on have succeeded (see the module)."""

    def __init__(self, address: str, connect_timeout_s: int = CONNECT_TIMEOUT_S):
        self.address = address
        self.connect_timeout_s = connect_timeout_s

    @property
    def retries(self):
        from dagster._core.execution.retries import RetryMode

        return RetryMode.DISABLED

    def execute(
        self, plan_context: PlanOrchestrationContext, execution_plan: ExecutionPlan
    ) -> Iterator[DagsterEvent]:
        from dagster import deserialize_value
        from dagster._core.errors import raise_execution_interrupts
        from dagster._utils import iterate_with_context
        from dagster_dask.executor import get_dask_resource_requirements
        from distributed import Client, as_completed

        run = plan_context.dagster_run
        if not plan_context.instance.is_persistent:
            raise DaskStepsError("the dask executor needs a persistent Dagster instance: set DAGSTER_HOME")
        try:
            client = Client(self.address, timeout=self.connect_timeout_s)
        except OSError as exc:
            raise DaskStepsError(
                f"the dask scheduler at {self.address} (${SCHEDULER_ENV}) does not answer after "
                f"{self.connect_timeout_s} s ({exc.__class__.__name__}): start it (`dask scheduler`) and its "
                f"workers, fix the address, or unset {SCHEDULER_ENV} to run the steps on this machine"
            ) from None
        # Steps in plan order; one is submitted when every step it depends on has succeeded, and
        # never when one of them has not (the run then fails with that step). Dask holds no
        # dependency between tasks, so a lost worker costs only the steps it was running.
        waiting = [step for level in execution_plan.get_steps_to_execute_by_level() for step in level]
        needs = {step.key: {key for i in step.step_inputs for key in i.dependency_keys} for step in waiting}
        succeeded: set[str] = set()
        not_run: set[str] = set()
        lost: list[str] = []
        with client:
            finished = as_completed([], with_results=True, raise_errors=False)
            step_of: dict[str, str] = {}

            def submit_ready() -> None:
                for step in list(waiting):
                    if needs[step.key] & not_run:
                        not_run.add(step.key)
                    elif needs[step.key] <= succeeded:
                        call = _StepCall(
                            plan_context.reconstructable_job,
                            run,
                            plan_context.run_config,
                            step.key,
                            plan_context.instance.get_ref(),
                            execution_plan.known_state,
                        )
                        # the dashboard groups tasks by the part before the first "-": job.step
                        key = f"{plan_context.job_name}.{step.key}-{run.run_id}"
                        step_of[key] = step.key
                        finished.add(
                            client.submit(
                                _run_step_on_worker,
                                call,
                                key=key,
                                resources=get_dask_resource_requirements(step.tags),
                                pure=False,
                            )
                        )
                    else:
                        continue
                    waiting.remove(step)

            submit_ready()
            for future, result in iterate_with_context(raise_execution_interrupts, finished):
                step_key = step_of[future.key]
                if future.status == "error":
                    lost.append(f"{step_key} ({result[1].__class__.__name__}: {result[1]})")
                    not_run.add(step_key)
                else:
                    events = deserialize_value(result, list)
                    yield from events
                    ok = any(event.is_step_success for event in events)
                    (succeeded if ok else not_run).add(step_key)
                future.release()
                submit_ready()
        if lost:
            raise DaskStepsError(
                f"{len(lost)} step(s) of run {run.run_id} did not finish on the dask cluster at "
                f"{self.address}: {'; '.join(lost)}. See the dask workers' logs; re-execute the run from "
                "failure (the finished steps are kept)"
            )


@executor(
    name="ferlab",
    config_schema={
        "dask_scheduler": Field(
            StringSource,
            is_required=False,
            description=f"A dask scheduler's address (tcp://10.0.0.5:8786): the steps run on its workers. "
            f"Default ${SCHEDULER_ENV}; neither: Dagster's multiprocess executor on this machine.",
        ),
        "connect_timeout_s": Field(IntSource, default_value=CONNECT_TIMEOUT_S),
        "max_concurrent": Field(
            Noneable(Int),
            default_value=None,
            description="On this machine: steps at once (default: the CPU count).",
        ),
    },
    requirements=multiple_process_executor_requirements(),
)
def ferlab_executor(init_context: InitExecutorContext) -> Executor:
    """The dask cluster's workers when a scheduler is given (`dask_scheduler`, else
    `$FERLAB_DASK_SCHEDULER`, read when the run starts), else Dagster's multiprocess executor (its
    retries on: the assets' RetryPolicy applies). The same definitions serve both: a run worker, a
    dask worker and the UI load one job."""
    config = init_context.executor_config
    address = str(config.get("dask_scheduler") or os.environ.get(SCHEDULER_ENV, "")).strip()
    if address:
        return RunScopedDaskExecutor(address, int(config["connect_timeout_s"]))
    local = {"max_concurrent": config.get("max_concurrent"), "retries": {"enabled": {}}}
    return multiprocess_executor.executor_creation_fn(  # type: ignore[misc]
        InitExecutorContext(
            job=init_context.job,
            executor_def=multiprocess_executor,
            executor_config=local,
            instance=init_context.instance,
        )
    )
