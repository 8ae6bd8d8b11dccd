# Tests of the config module.
podium_test(test_config test_config.c LIBS podium_config)
