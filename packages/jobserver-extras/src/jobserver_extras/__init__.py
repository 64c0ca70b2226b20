"""Linux hardening and launch gates for jobserver-core."""
