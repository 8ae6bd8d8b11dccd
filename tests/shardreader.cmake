# Tests of the shardreader module.
