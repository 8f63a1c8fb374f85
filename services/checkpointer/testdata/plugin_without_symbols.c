/* A shared library that is not a checkpoint store plugin: custom_store_test loads it to check
 * the error that lists the missing serve_store_* functions. */
int serve_store_something_else(void);
int serve_store_something_else(void) { return 0; }
