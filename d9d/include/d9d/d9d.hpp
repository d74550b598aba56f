// The whole public API of d9d: core, io, dist, mapper and the streamed engine. Include it from code
// built against the whole library (dependency('d9d') or pkg-config d9d); d9d's own layers
// include only the headers of the layers below them.
#pragma once

#include <d9d/core.hpp>
#include <d9d/dist.hpp>
#include <d9d/io/checkpoint.hpp>
#include <d9d/io/file.hpp>
#include <d9d/io/mapped_file.hpp>
#include <d9d/io/safetensors.hpp>
#include <d9d/mapper.hpp>
#include <d9d/model_state/conversion.hpp>
#include <d9d/model_state/distributed.hpp>
#include <d9d/model_state/progress.hpp>
#include <d9d/model_state/reader.hpp>
#include <d9d/model_state/writer.hpp>
