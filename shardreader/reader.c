/* placeholder */
typedef int podium_placeholder_shardreader_reader;
