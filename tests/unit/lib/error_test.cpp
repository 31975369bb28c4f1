#include "lib/error.h"

#include <gtest/gtest.h>

namespace {

using blimp::Error;
using blimp::ErrorOr;

ErrorOr<int> half(int x) {
  if (x % 2) return Error::InvalidArgument;
  return x / 2;
}

ErrorOr<int> quarter(int x) {
  int h = TRY(half(x));
  return TRY(half(h));
}

TEST(ErrorOr, ValuesAndErrorsPropagate) {
  EXPECT_EQ(quarter(8).value(), 2);
  auto r = quarter(6);
  ASSERT_TRUE(r.is_error());
  EXPECT_EQ(r.error(), Error::InvalidArgument);
  EXPECT_STREQ(blimp::error_name(r.error()), "invalid argument");
}

TEST(ErrorOr, Assignment) {
  ErrorOr<int> r = Error::Timeout;
  r = 5;
  ASSERT_FALSE(r.is_error());
  EXPECT_EQ(r.value(), 5);
  r = Error::Busy;
  ASSERT_TRUE(r.is_error());
  EXPECT_EQ(r.error(), Error::Busy);
}

TEST(ErrorOr, VoidSpecialisation) {
  ErrorOr<void> ok;
  ErrorOr<void> bad = Error::NoMemory;
  EXPECT_FALSE(ok.is_error());
  EXPECT_TRUE(bad.is_error());
  EXPECT_EQ(bad.error(), Error::NoMemory);
}

}  // namespace
