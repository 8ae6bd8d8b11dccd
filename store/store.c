/* placeholder */
typedef int podium_placeholder_store_store;
