from omniq_tasks import OmniqClient
from omniq_tasks.protocol.models import ReservedJob


def test_publish_reserve_ack(client: OmniqClient, r) -> None:
    pub = client.publish("demo", {"a": 1}, now_ms=1000)
    job = client.reserve("demo", now_ms=1001)
    assert isinstance(job, ReservedJob) and job.job_id == pub.job_id
    assert job.lock_until_ms == 1001 + 30000
    client.ack_success("demo", job.job_id, job.lease_token, now_ms=1002)
    assert r.hget("{demo}:job:" + job.job_id, "state") == "completed"
    assert client.stats("demo").completed_kept == 1
