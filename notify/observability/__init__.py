"""What operators watch a running notify by: metrics, structured logs, traces."""
