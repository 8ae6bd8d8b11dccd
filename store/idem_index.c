/* placeholder */
typedef int podium_placeholder_idem_index;
