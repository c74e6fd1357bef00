"""Concurrency limits are Prefect's own: tag limits (`app:<app>`) that the worker applies to jobs (a work
pool's limit: tests/e2e/test_pool_limit.py). With a limit of 1, jobs run one after another: no job starts at
the central before the previous one finished there."""



from dendro_prefect.embedded import prefect_cli
from tests.conftest import create_letter_count_job
from tests.stack import finished_job, flow_run_log, flow_runs_of_job, running_controller

JOBS = 3


def create_slow_jobs(controller, delay_sec: float = 2) -> list[str]:
    return [create_letter_count_job(controller.admin, controller.resource_id,
                                    inputParameters=[{"name": "letter", "value": "o"},
                                                     {"name": "delay_sec", "value": delay_sec}])
            for _ in range(JOBS)]


def assert_one_at_a_time(controller, job_ids: list[str]) -> None:
    jobs = sorted((finished_job(controller.admin, job_id, timeout=120) for job_id in job_ids),
                  key=lambda job: job["timestampStarting"])
    assert [job["status"] for job in jobs] == ["completed"] * JOBS, [job.get("error") for job in jobs]
    for earlier, later in zip(jobs, jobs[1:]):
        assert later["timestampStarting"] >= earlier["timestampFinished"], (earlier, later)


def test_an_app_limit_of_one_runs_its_jobs_one_at_a_time(prefect_stack, tmp_path, sdk_bin):
    """The admin's command is Prefect's: `prefect concurrency-limit create app:letter_count 1`. Jobs
    that find the limit full wait in the queue (AwaitingConcurrencySlot) and say so in their log."""
    with running_controller(prefect_stack, tmp_path / "app-limit", sdk_bin) as controller:
        prefect_cli(prefect_stack.home, prefect_stack.api_url, "concurrency-limit", "create", "app:letter_count", "1")
        try:
            job_ids = create_slow_jobs(controller)
            assert_one_at_a_time(controller, job_ids)
        finally:
            prefect_cli(prefect_stack.home, prefect_stack.api_url, "concurrency-limit", "delete", "app:letter_count")
        logs = [flow_run_log(flow_runs_of_job(job_id)[0].id) for job_id in job_ids]
        assert any("Job waits for a slot: concurrency limit app:letter_count is full" in log for log in logs)
