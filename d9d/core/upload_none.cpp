// Builds without CUDA: DeviceUploader cannot be made (see <d9d/upload.hpp>).
#include <d9d/upload.hpp>

#include <d9d/error.hpp>

namespace d9d {

struct DeviceUploader::Impl {};

DeviceUploader::DeviceUploader(Device device, UploadOptions) {
  detail::throw_error<DeviceError>("DeviceUploader for ", device,
                                   ": d9d was built without CUDA (nvcc was not found when it was "
                                   "configured, or -Dcuda=disabled)");
}
DeviceUploader::~DeviceUploader() = default;
DeviceUploader::DeviceUploader(DeviceUploader&&) noexcept = default;
DeviceUploader& DeviceUploader::operator=(DeviceUploader&&) noexcept = default;
Device DeviceUploader::device() const { return Device::cpu(); }
Tensor DeviceUploader::upload(const Tensor&) {
  detail::throw_error<DeviceError>("upload: d9d was built without CUDA");
}

}  // namespace d9d
