/* placeholder */
typedef int podium_placeholder_publisher_topic;
