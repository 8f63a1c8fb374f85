#include <gtest/gtest.h>

TEST(Placeholderredisstore, Builds) {}
