# Tests of the publisher module.
