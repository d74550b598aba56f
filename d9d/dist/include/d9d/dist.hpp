// The dist layer of d9d: process groups (MPI, NCCL), device meshes, placements and DTensor.
#pragma once

#include <d9d/dist/device_mesh.hpp>
#include <d9d/dist/dtensor.hpp>
#include <d9d/dist/placement.hpp>
#include <d9d/dist/process_group.hpp>
