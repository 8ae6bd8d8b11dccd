/* placeholder */
typedef int podium_placeholder_sigv4;
