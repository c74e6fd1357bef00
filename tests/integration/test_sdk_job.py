"""The real dendro 0.2.17 SDK (in its own virtual environment) runs a job against the stand-in.

The app runs as a plain process with the environment a launcher gives it, as the original
daemon's `none` container method does; the test plays the controller's one part: `starting`.
"""

import json
import os
import subprocess

import pytest

from tests.conftest import LETTER_COUNT_APP, create_letter_count_job


def run_job(central, resource, job_id, sdk_bin, workdir):
    key = next(j["jobPrivateKey"] for j in resource.client.get_unfinished_jobs() if j["jobId"] == job_id)
    resource.client.set_job_status(job_id, key, "starting")
    executable = str(LETTER_COUNT_APP / "main.py")
    env = dict(
        os.environ,
        PATH=f"{sdk_bin}{os.pathsep}{os.environ['PATH']}",
        JOB_ID=job_id, JOB_PRIVATE_KEY=key, APP_EXECUTABLE=executable,
        JOB_TIMEOUT_SEC="60", DENDRO_URL=central.url, PYTHONUNBUFFERED="1",
    )
    workdir.mkdir()
    return subprocess.run([executable], env=env, cwd=workdir, capture_output=True, text=True, timeout=120)


def test_real_sdk_job_completes_with_output_and_console(central, resource, sdk_bin, tmp_path):
    job_id = create_letter_count_job(central, resource.id, text="hello dendro world", letter="o")
    finished = run_job(central, resource, job_id, sdk_bin, tmp_path / "job")
    assert finished.returncode == 0, finished.stdout + finished.stderr
    job = central.job(job_id)
    assert job["status"] == "completed", job.get("error")
    assert job["timestampStarting"] < job["timestampStarted"] < job["timestampFinished"]
    assert json.loads(central.output(job_id, "output")) == {"letter": "o", "count": 3}
    console = central.output(job_id, "_console_output").decode()
    assert "letter_count: 'o' appears 3 times in 18 characters" in console
    assert "[dendro] Job complete" in console
    assert resource.client.get_unfinished_jobs() == []


@pytest.mark.parametrize("letter", ["xx"])
def test_failing_app_ends_failed_with_its_error(central, resource, sdk_bin, tmp_path, letter):
    job_id = create_letter_count_job(central, resource.id, letter=letter)
    run_job(central, resource, job_id, sdk_bin, tmp_path / "job")
    job = central.job(job_id)
    assert job["status"] == "failed"
    assert job["error"] == "Error running job: return code 1"
    assert "letter must be one character, not 'xx'" in central.output(job_id, "_console_output").decode()
