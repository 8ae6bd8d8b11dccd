/* placeholder */
typedef int podium_placeholder_base64;
