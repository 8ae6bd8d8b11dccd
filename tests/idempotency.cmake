# Tests of the idempotency library.
