"""A job's output on its way to the flow-run log: where streaming resumes after a worker restart, and
which lines say why a job failed."""

import logging

from dendro_prefect.workers.job_dir import JobDirectory, WatchedJobFiles
from dendro_prefect.workers.job_output import StreamedOutput, redactor

SECRET = "s3cr3t-job-key-0123456789abcdef"


def job_with_output(tmp_path) -> JobDirectory:
    job_dir = JobDirectory.create(tmp_path / "job")
    job_dir.console_output.parent.mkdir(parents=True)
    return job_dir


def test_a_worker_taking_a_job_up_again_streams_only_what_the_log_lacks(tmp_path):
    job_dir = job_with_output(tmp_path)
    job_dir.stdout.write_text("sdk: running\n")
    job_dir.console_output.write_text("app: line 1\napp: half a li")
    first = WatchedJobFiles(record_after_sec=0)
    first.watch("process:1", job_dir, SECRET, job_dir.stdout, job_dir.console_output)
    assert first.read_lines("process:1") == ["sdk: running", "app: line 1"]
    # The worker is lost; the app goes on writing; the next worker watches the same files.
    with open(job_dir.console_output, "a") as console:
        console.write("ne\napp: line 3\n")
    again = WatchedJobFiles(record_after_sec=0)
    again.watch("process:1", job_dir, SECRET, job_dir.stdout, job_dir.console_output)
    assert again.read_lines("process:1") == ["app: half a line", "app: line 3"]
    assert again.read_lines("process:1") == []


def test_a_stream_that_is_not_a_file_resumes_from_its_recorded_offset(tmp_path):
    job_dir = job_with_output(tmp_path)
    files = WatchedJobFiles(record_after_sec=0)
    files.watch("docker:abc", job_dir, SECRET, job_dir.console_output)
    files.set_streamed("docker:abc", {"container.log": 120})
    again = WatchedJobFiles()
    again.watch("docker:abc", job_dir, SECRET, job_dir.console_output)
    assert again.streamed("docker:abc", "container.log") == 120
    assert again.streamed("docker:other", "container.log") == 0


def test_what_prefect_may_not_have_yet_is_not_recorded(tmp_path):
    """Prefect's log handler sends lines in batches: a worker killed before a batch went would lose
    them if their offsets were recorded at once; they are recorded once they are surely sent."""
    job_dir = job_with_output(tmp_path)
    job_dir.stdout.write_text("one\n")
    files = WatchedJobFiles(record_after_sec=3600)
    files.watch("process:3", job_dir, SECRET, job_dir.stdout)
    assert files.read_lines("process:3") == ["one"]
    assert job_dir.read_streamed() == {}
    again = WatchedJobFiles()
    again.watch("process:3", job_dir, SECRET, job_dir.stdout)
    assert again.read_lines("process:3") == ["one"]


def test_a_damaged_record_of_the_stream_starts_from_the_beginning(tmp_path):
    job_dir = job_with_output(tmp_path)
    job_dir.stdout.write_text("one\n")
    job_dir.streamed.write_text("{not json")
    files = WatchedJobFiles()
    files.watch("process:2", job_dir, SECRET, job_dir.stdout)
    assert files.read_lines("process:2") == ["one"]


def test_at_its_release_the_jobs_key_is_in_no_output_and_its_secrets_are_gone(tmp_path):
    """The dendro SDK prints the key to its stdout and its debug log: at the job's end, they keep every line
    but with the key redacted as in the flow-run log, readable by its owner only."""
    job_dir = job_with_output(tmp_path)
    job_dir.write_secret("job_private_key", SECRET)
    sdk_line = f"2026-01-01 00:00:00 Running /app/main.py (Job ID: j1)) (Job private key: {SECRET})\n"
    job_dir.stdout.write_text(sdk_line + "Downloading https://bucket/x?X-Amz-Signature=abc123&a=1\nbytes: \udcff\n",
                              errors="surrogateescape")
    job_dir.stdout.chmod(0o640)
    job_dir.sdk_log.write_text(sdk_line)
    job_dir.console_output.write_text("app: 3 letters\n")
    files = WatchedJobFiles()
    files.watch("process:4", job_dir, SECRET, job_dir.stdout, job_dir.console_output)
    files.release("process:4")
    assert job_dir.stdout.read_text(errors="surrogateescape") == (
        "2026-01-01 00:00:00 Running /app/main.py (Job ID: j1)) (Job private key: [redacted])\n"
        "Downloading https://bucket/x?X-Amz-Signature=[redacted]&a=1\nbytes: \udcff\n")
    assert job_dir.stdout.stat().st_mode & 0o777 == 0o600
    assert SECRET not in job_dir.sdk_log.read_text()
    assert job_dir.console_output.read_text() == "app: 3 letters\n"  # left untouched: nothing to redact
    assert not job_dir.secrets.exists() and sorted(p.name for p in job_dir.stdout.parent.iterdir()) == ["stdout.log", "tmp"]


def test_the_apps_last_lines_come_from_its_own_output_not_the_sdks(tmp_path):
    job_dir = job_with_output(tmp_path)
    job_dir.stdout.write_text("2026-01-01 00:00:00 Error running job: return code 1\nJob failed: x\n")
    job_dir.console_output.write_text("".join(f"line {i}\n" for i in range(5000)) + "progress 10%\rprogress 99%\r"
                                      "\nTraceback (most recent call last):\nValueError: bad letter\n")
    assert job_dir.last_app_lines(3) == ["progress 99%", "Traceback (most recent call last):", "ValueError: bad letter"]
    assert JobDirectory(tmp_path / "absent").last_app_lines(3) == []


def streamed(caplog) -> StreamedOutput:
    caplog.set_level(logging.INFO)
    return StreamedOutput(redactor(SECRET), logging.getLogger("flow-run"))


def test_a_failed_apps_last_line_leads_the_reason_and_its_last_lines_end_the_log(caplog):
    output = streamed(caplog)
    output.log(["2026-01-01 00:00:00 Running job p.j", "Job failed: Error running job: return code 1"])
    assert output.sdk_failure == "Error running job: return code 1"
    reason = output.failure("p.j", ["Traceback (most recent call last):", f"ValueError: key {SECRET} refused"])
    assert reason == "ValueError: key [redacted] refused (Error running job: return code 1)"
    last = caplog.records[-1].getMessage()
    assert last.startswith("Job p.j failed (Error running job: return code 1); the app's last lines:\n")
    assert last.endswith("Traceback (most recent call last):\nValueError: key [redacted] refused")
    assert SECRET not in caplog.text


def test_reasons_the_sdk_knows_better_are_kept(caplog):
    output = streamed(caplog)
    output.log(["Job failed: Job timed out: 12.1 > 10 seconds"])
    assert output.failure("p.j", ["still working"]) == "Job timed out: 12.1 > 10 seconds"
    silent = streamed(caplog)
    assert silent.failure("p.j", []) == "The job failed at the central"
    assert silent.last_line is None


def test_streamed_lines_are_redacted_and_the_last_one_kept(caplog):
    output = streamed(caplog)
    output.log([f"key {SECRET}", "Downloading https://x/y?a=1&signature=abcdef&expires=9"])
    assert output.last_line == "Downloading https://x/y?a=1&signature=[redacted]&expires=9"
    assert SECRET not in caplog.text
