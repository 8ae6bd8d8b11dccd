/* placeholder */
typedef int podium_placeholder_idempotency;
