"""Queue and task names: one place, used by the API, the worker and the autoscaling code."""

VERIFY = "verify"
ENROLL = "enroll"
IDENTIFY = "identify"
REENROLL = "reenroll"

JOB_QUEUES = (VERIFY, ENROLL, IDENTIFY, REENROLL)
ALL_QUEUES = JOB_QUEUES

# One batch task consumes every job queue, so one forward pass serves all kinds in a batch.
RUN_JOBS_TASK = "biofleet.run_jobs"
# Callbacks have no queue here: the outbox table is theirs (shared.outbox, worker.dispatcher).

# The order a worker consumes its queues in (Redis queue_order_strategy "priority"): a message
# waiting in an earlier queue is taken first: bulk reenroll is consumed when the others are empty.
CONSUME_ORDER = (VERIFY, IDENTIFY, ENROLL, REENROLL)

# The queue a job kind goes to.
# detect reads no gallery: it shares the identify queue.
QUEUE_FOR_KIND = {"verify": VERIFY, "enroll": ENROLL, "identify": IDENTIFY, "reenroll": REENROLL, "detect": IDENTIFY}
