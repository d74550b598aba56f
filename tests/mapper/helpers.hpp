// Test helpers for the mapper tests: the reference suite's MergeAddMapper, group builders, data
// (random bytes from common/helpers.hpp).
#pragma once

#include <set>
#include <string>
#include <vector>

#include <d9d/core.hpp>
#include <d9d/mapper.hpp>

#include "common/helpers.hpp"

namespace d9d::mapper::test {

using ::d9d::test::randint;
using ::d9d::test::random_tensor;
using ::d9d::test::rng;

// Random finite values (quarters in [-32, 32]) for float dtypes, whose NaN payloads need not
// survive a conversion; random bytes for the others.
inline Tensor random_values(const Shape& shape, DType dtype) {
  if (!is_floating_point(dtype) || is_sub_byte(dtype)) return random_tensor(shape, dtype);
  std::vector<float> v(static_cast<size_t>(numel_of(shape)));
  for (auto& x : v) x = static_cast<float>(randint(-128, 128)) / 4.0f;
  return Tensor::from_vector<float>(v, shape).to(dtype);
}

// min_dims to max_dims dims, some of them 0 or 1 long.
inline Shape random_shape(int64_t min_dims, int64_t max_dims, int64_t max_size) {
  Shape s;
  const int64_t n = randint(min_dims, max_dims);
  for (int64_t i = 0; i < n; ++i)
    s.push_back(randint(0, max_size) == 0 ? randint(0, 1) : randint(1, max_size));
  return s;
}

inline StateGroup group(std::set<std::string> inputs, std::set<std::string> outputs) {
  return StateGroup{std::move(inputs), std::move(outputs)};
}

inline std::set<StateGroup> groups(std::initializer_list<StateGroup> list) {
  return {list};
}

inline std::set<std::string> keys(const StateDict& dict) {
  std::set<std::string> out;
  for (const auto& kv : dict) out.insert(kv.first);
  return out;
}

inline Tensor scalar(int64_t v) {
  return Tensor::full<int64_t>({}, v, DType::I64);
}
inline Tensor ints(std::vector<int64_t> v, const Shape& shape) {
  return Tensor::from_vector<int64_t>(v, shape);
}

// The reference suite's user-defined mapper: {a, b} -> {sum = a + b}. It overrides infer() too,
// as a user mapper that wants dry runs does.
class MergeAddMapper final : public ModelStateMapper {
 public:
  MergeAddMapper(std::string in_a, std::string in_b, std::string out_sum)
      : in_a_(std::move(in_a)), in_b_(std::move(in_b)), out_sum_(std::move(out_sum)) {
    groups_.insert(StateGroup{{in_a_, in_b_}, {out_sum_}});
  }
  StateDict apply(StateDict group) const override {
    const Tensor& a = group.at(in_a_);
    const Tensor& b = group.at(in_b_);
    std::vector<double> x = a.to_vector<double>();
    const std::vector<double> y = b.to_vector<double>();
    for (size_t i = 0; i < x.size(); ++i) x[i] += y[i];
    return {{out_sum_, Tensor::from_vector<double>(x, a.shape()).to(a.dtype())}};
  }
  SpecDict infer(const SpecDict& group) const override {
    const TensorSpec& a = group.at(in_a_);
    D9D_CHECK(a == group.at(in_b_), "merge_add: the specs differ");
    return {{out_sum_, a}};
  }
  std::string describe() const override { return "merge_add(" + in_a_ + ", " + in_b_ + ")"; }

 private:
  std::string in_a_, in_b_, out_sum_;
};

inline MapperPtr merge_add(std::string a, std::string b, std::string sum) {
  return std::make_shared<MergeAddMapper>(std::move(a), std::move(b), std::move(sum));
}

}  // namespace d9d::mapper::test
