"""Active health checking and load: the probe schedule, the HTTP prober and its transport, the
monitor with flap damping, critical-load alerts and their webhook."""
