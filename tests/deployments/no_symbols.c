/* A shared library with an ordinary C function and none of serve/abi.h: loading it as a
 * deployment must fail with a message saying what is missing. */
int add_numbers(int a, int b) { return a + b; }
