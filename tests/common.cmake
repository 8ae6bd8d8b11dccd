# Tests of the common module.
