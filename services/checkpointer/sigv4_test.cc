#include <gtest/gtest.h>

TEST(Placeholdersigv4, Builds) {}
