/* placeholder */
typedef int podium_placeholder_config_config;
