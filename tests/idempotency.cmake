# Tests of the idempotency library.
podium_test(test_idem_key test_idem_key.c LIBS podium_idempotency)
