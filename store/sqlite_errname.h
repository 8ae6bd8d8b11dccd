/*
 * Symbolic names of SQLite result codes, for error messages. Internal to
 * store/; part of the idempotency library, which the store links.
 */
#ifndef PODIUM_STORE_SQLITE_ERRNAME_H
#define PODIUM_STORE_SQLITE_ERRNAME_H

/*
 * Return the name of a primary or extended SQLite result code, such as
 * "SQLITE_BUSY" or "SQLITE_CONSTRAINT_PRIMARYKEY". An extended code that this
 * table lacks gets the name of its primary code. The string is static.
 */
const char *store_sqlite_errname(int rc);

#endif
