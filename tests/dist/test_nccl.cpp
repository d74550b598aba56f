// The NCCL backend on one GPU (a world of one: one GPU cannot hold two NCCL ranks). Exits 77
// (skipped) without NCCL or a CUDA device.
#include <cstdio>

#include <d9d/d9d.hpp>

using namespace d9d;

#define EXPECT(cond)                                                                     \
  do {                                                                                   \
    if (!(cond)) {                                                                       \
      std::fprintf(stderr, "test_nccl: %s:%d: failed: %s\n", __FILE__, __LINE__, #cond); \
      return 1;                                                                          \
    }                                                                                    \
  } while (0)

int main() {
  if (!dist::nccl_compiled() || cuda_device_count() == 0) {
    std::fprintf(stderr, "test_nccl: skipped (%s)\n",
                 dist::nccl_compiled() ? "no CUDA device" : "built without NCCL");
    return 77;
  }
  try {
    const dist::ProcessGroupPtr world = dist::init(dist::Backend::kNccl);
    EXPECT(world->backend() == dist::Backend::kNccl);
    EXPECT(world->size() == 1 && world->rank() == 0);
    const Device gpu = world->device();
    EXPECT(gpu.is_cuda());
    const Tensor x = Tensor::arange(24, DType::F32).reshape({6, 4});
    const Tensor xg = x.to(gpu);
    // all_gather, all_gather_into_tensor and broadcast on device memory.
    const std::vector<Tensor> all = world->all_gather(xg);
    EXPECT(all.size() == 1 && all[0].device() == gpu && equal(all[0].to(Device::cpu()), x));
    const Tensor out = Tensor::empty({6, 4}, DType::F32, gpu);
    world->all_gather_into_tensor(out, xg);
    EXPECT(equal(out.to(Device::cpu()), x));
    world->broadcast(out, 0);
    EXPECT(world->all_gather_object("nccl") == std::vector<std::string>{"nccl"});
    world->barrier();
    // A DTensor on the GPU: distribute, gather back.
    const dist::DeviceMesh mesh(world, {1}, {"dp"});
    const dist::DTensor d = dist::distribute_tensor(xg, mesh, {dist::Shard{1}});
    const Tensor back = d.full_tensor();
    EXPECT(back.device() == gpu && equal(back.to(Device::cpu()), x));
    // A CPU tensor is refused by the NCCL backend.
    bool refused = false;
    try {
      world->all_gather(x);
    } catch (const DeviceError&) {
      refused = true;
    }
    EXPECT(refused);
    // A group split from it.
    const dist::ProcessGroupPtr sub = world->split(0, 0);
    EXPECT(sub != nullptr && sub->backend() == dist::Backend::kNccl);
    EXPECT(equal(sub->all_gather(xg)[0].to(Device::cpu()), x));
  } catch (const std::exception& e) {
    std::fprintf(stderr, "test_nccl: %s\n", e.what());
    return 1;
  }
  std::printf("test_nccl: OK\n");
  return 0;
}
