# Tests of the daemon module.
