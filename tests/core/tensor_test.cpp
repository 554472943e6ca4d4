// tensor_test.cpp — Tensor views share storage; copies convert exactly.
#include <gtest/gtest.h>

#include "core/tensor.h"

namespace dseek {
namespace {

TEST(Tensor, ViewsShareStorage) {
  Tensor t = Tensor::zeros({4, 3}, DType::F32);
  for (int i = 0; i < 12; ++i) t.data<float>()[i] = float(i);
  Tensor r = t.slice(1, 2);
  EXPECT_EQ(r.shape(), (Shape{2, 3}));
  EXPECT_EQ(r.data<float>()[0], 3.0f);
  r.data<float>()[0] = 100;
  EXPECT_EQ(t.data<float>()[3], 100.0f);
  Tensor row = t[3];
  EXPECT_EQ(row.shape(), (Shape{3}));
  EXPECT_EQ(row.data<float>()[2], 11.0f);
  Tensor v = t.view({2, 6});
  EXPECT_EQ(v.data<float>()[6], 6.0f);
  EXPECT_THROW(t.view({5}), Error);
  EXPECT_THROW(t.slice(3, 2), Error);
  EXPECT_THROW(t.data<double>(), Error);
}

TEST(Tensor, ConvertAndClone) {
  Tensor t = Tensor::empty({3}, DType::F32);
  t.data<float>()[0] = 1.5f;
  t.data<float>()[1] = -2.0f;
  t.data<float>()[2] = 3.0e-3f;
  Tensor b = t.to(DType::BF16);
  EXPECT_EQ(b.dtype(), DType::BF16);
  Tensor back = b.to(DType::F32);
  EXPECT_EQ(back.data<float>()[0], 1.5f);
  EXPECT_EQ(back.data<float>()[1], -2.0f);
  Tensor c = t.clone();
  c.data<float>()[0] = 9;
  EXPECT_EQ(t.data<float>()[0], 1.5f);
  Tensor f = Tensor::empty({2}, DType::BF16);
  f.fill(0.5);
  EXPECT_EQ(f.to(DType::F32).data<float>()[1], 0.5f);
}

}  // namespace
}  // namespace dseek
