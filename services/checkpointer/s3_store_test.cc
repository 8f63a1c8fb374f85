#include <gtest/gtest.h>

TEST(Placeholders3store, Builds) {}
