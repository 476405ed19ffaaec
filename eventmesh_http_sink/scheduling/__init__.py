"""When an attempt may start: retry policy and timers, the rate limit, the circuit breaker."""
