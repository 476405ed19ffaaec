"""The dispatcher: queue, worker loops, concurrency limit, URL strategies and batching."""
