// TensorRT plugin `ChannelAttention`, version "1": the fused channel attention as an IPluginV3
// (IPluginV3OneCore, IPluginV3OneBuild, IPluginV3OneRuntime) with its IPluginCreatorV3One.
//
// It takes the node `tldeploy export --attention-plugin` writes (see README.md):
//   Y = ChannelAttention(X, W1, B1, W2, B2), X and Y N x C x H x W, float32 or float16, linear;
// the weights are constants the ONNX parser hands over as inputs 1-4. The plugin has no fields.
// Loaded by `trt.get_plugin_registry().load_library(path)` and `trtexec --staticPlugins=path`
// through the exported getCreators().
#include <NvInferRuntime.h>

#include <cstring>
#include <exception>
#include <string>

#include "tldeploy_ca.h"

using namespace nvinfer1;

namespace {

constexpr char const* kName = "ChannelAttention";
constexpr char const* kVersion = "1";
constexpr int32_t kInputs = 5;

class ChannelAttentionPlugin final : public IPluginV3, public IPluginV3OneCore, public IPluginV3OneBuild, public IPluginV3OneRuntime {
public:
    explicit ChannelAttentionPlugin(std::string ns) : mNamespace(std::move(ns)) {}

    // IPluginV3
    IPluginCapability* getCapabilityInterface(PluginCapabilityType type) noexcept override {
        switch (type) {
            case PluginCapabilityType::kCORE: return static_cast<IPluginV3OneCore*>(this);
            case PluginCapabilityType::kBUILD: return static_cast<IPluginV3OneBuild*>(this);
            case PluginCapabilityType::kRUNTIME: return static_cast<IPluginV3OneRuntime*>(this);
        }
        return nullptr;
    }

    IPluginV3* clone() noexcept override {
        try {
            return new ChannelAttentionPlugin(*this);
        } catch (std::exception const&) {
            return nullptr;
        }
    }

    // IPluginV3OneCore
    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }

    // IPluginV3OneBuild
    int32_t getNbOutputs() const noexcept override { return 1; }

    int32_t configurePlugin(DynamicPluginTensorDesc const* in, int32_t nbInputs, DynamicPluginTensorDesc const*,
                            int32_t nbOutputs) noexcept override {
        if (nbInputs != kInputs || nbOutputs != 1 || in[0].desc.dims.nbDims != 4) return -1;
        return 0;
    }

    int32_t getOutputDataTypes(DataType* outputTypes, int32_t nbOutputs, DataType const* inputTypes,
                               int32_t nbInputs) const noexcept override {
        if (nbOutputs != 1 || nbInputs != kInputs) return -1;
        outputTypes[0] = inputTypes[0];
        return 0;
    }

    int32_t getOutputShapes(DimsExprs const* inputs, int32_t nbInputs, DimsExprs const*, int32_t, DimsExprs* outputs,
                            int32_t nbOutputs, IExprBuilder&) noexcept override {
        if (nbInputs != kInputs || nbOutputs != 1 || inputs[0].nbDims != 4) return -1;
        outputs[0] = inputs[0];  // the feature map's shape, dynamic batch included
        return 0;
    }

    // Float32 or float16, linear (NCHW) format, the same type everywhere.
    bool supportsFormatCombination(int32_t pos, DynamicPluginTensorDesc const* inOut, int32_t nbInputs,
                                   int32_t nbOutputs) noexcept override {
        if (nbInputs != kInputs || nbOutputs != 1 || pos < 0 || pos >= kInputs + 1) return false;
        PluginTensorDesc const& d = inOut[pos].desc;
        if (d.format != TensorFormat::kLINEAR) return false;
        if (pos == 0) return d.type == DataType::kFLOAT || d.type == DataType::kHALF;
        return d.type == inOut[0].desc.type;
    }

    size_t getWorkspaceSize(DynamicPluginTensorDesc const* inputs, int32_t nbInputs, DynamicPluginTensorDesc const*,
                            int32_t) const noexcept override {
        if (nbInputs != kInputs) return 0;
        return tldeploy_ca_cuda_workspace_size(inputs[0].max.d[0], inputs[0].max.d[1], inputs[1].max.d[0]);
    }

    // IPluginV3OneRuntime
    int32_t onShapeChange(PluginTensorDesc const* in, int32_t nbInputs, PluginTensorDesc const*, int32_t nbOutputs) noexcept override {
        return (nbInputs == kInputs && nbOutputs == 1 && in[0].dims.nbDims == 4) ? 0 : -1;
    }

    int32_t enqueue(PluginTensorDesc const* inputDesc, PluginTensorDesc const*, void const* const* inputs, void* const* outputs,
                    void* workspace, cudaStream_t stream) noexcept override {
        Dims const& d = inputDesc[0].dims;
        int const dtype = inputDesc[0].type == DataType::kHALF ? TLDEPLOY_CA_FLOAT16 : TLDEPLOY_CA_FLOAT32;
        return tldeploy_ca_cuda_forward(dtype, inputs[0], inputs[1], inputs[2], inputs[3], inputs[4], outputs[0], workspace, d.d[0],
                                        d.d[1], static_cast<int64_t>(d.d[2]) * d.d[3], inputDesc[1].dims.d[0], stream);
    }

    IPluginV3* attachToContext(IPluginResourceContext*) noexcept override { return clone(); }

    PluginFieldCollection const* getFieldsToSerialize() noexcept override {
        mFields.nbFields = 0;
        mFields.fields = nullptr;
        return &mFields;
    }

private:
    std::string mNamespace;
    PluginFieldCollection mFields{};
};

class ChannelAttentionCreator final : public IPluginCreatorV3One {
public:
    ChannelAttentionCreator() {
        mFields.nbFields = 0;
        mFields.fields = nullptr;
    }

    char const* getPluginName() const noexcept override { return kName; }
    char const* getPluginVersion() const noexcept override { return kVersion; }
    char const* getPluginNamespace() const noexcept override { return mNamespace.c_str(); }
    PluginFieldCollection const* getFieldNames() noexcept override { return &mFields; }

    IPluginV3* createPlugin(char const*, PluginFieldCollection const* fc, TensorRTPhase) noexcept override {
        // The node has no attributes but plugin_version (and, optionally, plugin_namespace), which
        // the ONNX parser may pass on; any other field means a node this version does not know.
        if (fc != nullptr) {
            for (int32_t i = 0; i < fc->nbFields; ++i) {
                char const* name = fc->fields[i].name;
                if (name != nullptr && std::strcmp(name, "plugin_version") != 0 && std::strcmp(name, "plugin_namespace") != 0) return nullptr;
            }
        }
        try {
            return new ChannelAttentionPlugin(mNamespace);
        } catch (std::exception const&) {
            return nullptr;
        }
    }

private:
    PluginFieldCollection mFields{};
    std::string mNamespace;
};

}  // namespace

extern "C" TENSORRTAPI IPluginCreatorInterface* const* getCreators(int32_t& nbCreators) {
    static ChannelAttentionCreator creator;
    static IPluginCreatorInterface* const creators[] = {&creator};
    nbCreators = 1;
    return creators;
}
