"""What happens to outcomes: the once-only resolver, the features' hooks, what outlives the process.

* ``resolver``: claims each record once, runs its callback, then resolves its Future; the counters.
* ``hooks``: the rate limit and breaker gate, the result store, the dead letter, fanned out from three calls.
* ``result_store``, ``export_server``, ``dead_letter``, ``replay``, ``failure_log``: the features themselves.
"""
