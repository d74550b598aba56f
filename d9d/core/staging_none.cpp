// Builds without CUDA: StagingRing cannot be made (see <d9d/staging.hpp>).
#include <d9d/staging.hpp>

#include <d9d/error.hpp>

namespace d9d {

struct StagingRing::Impl {};

StagingRing::StagingRing(Device device, StagingOptions) {
  detail::throw_error<DeviceError>("StagingRing for ", device,
                                   ": d9d was built without CUDA (nvcc was not found when it was "
                                   "configured, or -Dcuda=disabled)");
}
StagingRing::~StagingRing() = default;
StagingRing::StagingRing(StagingRing&&) noexcept = default;
StagingRing& StagingRing::operator=(StagingRing&&) noexcept = default;
Device StagingRing::device() const { return Device::cpu(); }
Tensor StagingRing::upload(const Tensor&) {
  detail::throw_error<DeviceError>("upload: d9d was built without CUDA");
}
Tensor StagingRing::upload(const Shape&, DType, const Source&) {
  detail::throw_error<DeviceError>("upload: d9d was built without CUDA");
}

void StagingRing::download(const Tensor&, const Sink&) {
  detail::throw_error<DeviceError>("download: d9d was built without CUDA");
}
StagingRing& StagingRing::shared(Device device) {
  detail::throw_error<DeviceError>("StagingRing for ", device, ": d9d was built without CUDA");
}

}  // namespace d9d
