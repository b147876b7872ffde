"""On-device benchmark: student vs teacher, accuracy and latency. numpy + a runtime only (no torch)."""
