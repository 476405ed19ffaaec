"""From accepted record to request: the unit and its Future, the dispatcher, one attempt.

* ``unit``: the record's Future (resolves after its callback) and the unit the workers move.
* ``dispatcher``: the queue, worker loops, thread pool, concurrency limit, batcher and timers.
* ``attempt``: one attempt, single or batched, inside the one guard that finishes every record.
* ``concurrency``, ``strategies``, ``batching``: how many loops run, which URL, how many records a request.
"""
