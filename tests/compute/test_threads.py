"""A job's thread environment: the stage's thread count held, a short spin, the user's
own settings kept."""

from tcspec.compute.threads import JOB_ENVIRONMENT, SPIN_COUNT, set_job_environment


def test_a_job_spins_briefly_and_holds_its_thread_count():
    env: dict[str, str] = {}
    set_job_environment(env)
    assert env == JOB_ENVIRONMENT
    assert env["GOMP_SPINCOUNT"] == str(SPIN_COUNT)
    assert env["MKL_DYNAMIC"] == env["OMP_DYNAMIC"] == "FALSE"


def test_the_user_s_wait_policy_or_spin_count_wins():
    env = {"OMP_WAIT_POLICY": "ACTIVE"}  # a spin count would override the policy
    set_job_environment(env)
    assert "GOMP_SPINCOUNT" not in env and env["OMP_WAIT_POLICY"] == "ACTIVE"
    env = {"GOMP_SPINCOUNT": "0", "OMP_DYNAMIC": "TRUE"}
    set_job_environment(env)
    assert env["GOMP_SPINCOUNT"] == "0" and env["OMP_DYNAMIC"] == "TRUE"
