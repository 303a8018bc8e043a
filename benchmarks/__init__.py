"""Throughput benchmarks: notify side by side with what teams hand-roll; see README.md."""
