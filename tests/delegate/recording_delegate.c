/*
 * A real TFLite external delegate for tests. It implements the plugin entry points that
 * tflite's load_delegate() looks for, records the options it is given, claims no nodes (so the
 * CPU kernels run the whole graph), and can be told to fail like broken vendor delegates do.
 * With hang_after it claims one node and runs it itself, so that the interpreter's invoke()
 * passes through this library and can be made to block (a driver wedged mid-stream).
 *
 * Options:  record_file=PATH  append "key=value" lines, then "prepare" per Prepare() call
 *           fail=create       return NULL from create (load_delegate raises ValueError)
 *           fail=prepare      return an error from Prepare (the interpreter refuses it)
 *           fail=crash        SIGSEGV in Prepare (a broken vendor driver)
 *           fail=hang         block forever in Prepare (a wedged NPU)
 *           sleep_ms=N        take N ms in Prepare, then work (an NPU compiling its graph)
 *           hang_after=N      claim the graph's first QUANTIZE node (8-bit to 8-bit, as the
 *                             input of `edged export`'s int8 models), compute it, and block
 *                             forever in invoke number N+1 of this delegate instance (each
 *                             load_delegate() counts from 0: a probe child has its own count);
 *                             says so on stderr first. Prepare fails without such a node.
 *           conv=last         claim the execution plan's last CONV_2D node (a YOLO head's 1x1
 *                             conv) and compute it here, so that a model's result really comes
 *                             out of this library: what a vendor delegate does to the output,
 *                             the test can do too. int8 (in/out per-tensor, filter symmetric
 *                             per-channel or per-tensor int8, int32 bias; requantized in float
 *                             like XNNPACK, so the result equals the default CPU path's) or
 *                             float32; any KxK, stride, dilation, SAME/VALID padding; fused
 *                             activation none/relu/relu_n1_to_1/relu6.
 *                             Anything else (uint8, int16, hybrid, grouped, sparse) fails
 *                             Prepare, so nothing is computed wrongly. Records "claimed conv N"
 *                             (N: node index). Not with hang_after (Prepare fails).
 *           corrupt=MODE      damage the claimed conv's output after computing it, like broken
 *                             NPU delegates do (needs conv=last, else Prepare fails):
 *                             zeros  every element = real 0.0 (output zero point; 0.0f for
 *                                    float): the all-zero boxes of the VX delegate on i.MX 8M Plus
 *                             shift  moved one cell along the width axis, no wrap:
 *                                    out[n][y][x][c] = computed[n][y][x-1][c] for x >= 1, column 0
 *                                    keeps its own value (boxes land one cell to the right)
 *                             none   honest (the default)
 *           corrupt_after=N   compute honestly for the first N invokes of each interpreter's
 *                             claimed conv, then corrupt (an NPU going bad while running)
 *           any other key     recorded only
 *
 * Build: gcc -shared -fPIC -O2 -o librecording_delegate.so recording_delegate.c
 * No TFLite headers needed: the structs below mirror tensorflow/lite/core/c/common.h and
 * builtin_op_data.h (little-endian 64-bit only, for the TfLiteFloatArray probe).
 */
#include <float.h>
#include <signal.h>
#include <stdint.h>
#include <unistd.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

typedef enum { kTfLiteOk = 0, kTfLiteError = 1 } TfLiteStatus;
typedef int TfLiteBufferHandle;

/* Only the leading members, whose order the TFLite headers keep ("semi-ABI stable"). */
typedef struct {
  int size;
  int data[];
} TfLiteIntArray;

enum { kTfLiteFloat32 = 1, kTfLiteInt32 = 2, kTfLiteUInt8 = 3, kTfLiteInt8 = 9 };
enum { kTfLiteBuiltinConv2d = 3, kTfLiteBuiltinDelegate = 51, kTfLiteBuiltinQuantize = 114 };
enum { kTfLiteAffineQuantization = 1 };
enum { kTfLitePaddingSame = 1, kTfLitePaddingValid = 2 };
enum { kTfLiteActNone = 0, kTfLiteActRelu = 1, kTfLiteActReluN1To1 = 2, kTfLiteActRelu6 = 3 };

typedef struct {
  const void *scale; /* a TfLiteFloatArray, whose layout changed: see affine_scales() */
  TfLiteIntArray *zero_point;
  int32_t quantized_dimension;
} TfLiteAffineQuantization;

/* builtin_op_data.h; later versions append quantized_bias_type. */
typedef struct {
  int padding; /* TfLitePadding */
  int stride_width;
  int stride_height;
  int activation; /* TfLiteFusedActivation */
  int dilation_width_factor;
  int dilation_height_factor;
} TfLiteConvParams;

typedef struct TfLiteTensor {
  int type;
  void *data;
  TfLiteIntArray *dims;
  struct {
    float scale;
    int32_t zero_point;
  } params;
  int allocation_type;
  size_t bytes;
  const void *allocation;
  const char *name;
  struct TfLiteDelegate *delegate;
  TfLiteBufferHandle buffer_handle;
  _Bool data_is_stale;
  _Bool is_variable;
  struct {
    int type;
    void *params;
  } quantization;
  void *sparsity;
  const TfLiteIntArray *dims_signature; /* the last member since TF 2.3 (sizeof matters) */
} TfLiteTensor;

typedef struct TfLiteNode {
  TfLiteIntArray *inputs;
  TfLiteIntArray *outputs;
  TfLiteIntArray *intermediates;
  TfLiteIntArray *temporaries;
  void *user_data; /* what the kernel's init returned */
  void *builtin_data; /* TfLiteConvParams for CONV_2D */
  const void *custom_initial_data;
  int custom_initial_data_size;
  struct TfLiteDelegate *delegate;
  /* more members follow */
} TfLiteNode;

typedef struct TfLiteContext TfLiteContext;

typedef struct TfLiteRegistration {
  void *(*init)(TfLiteContext *context, const char *buffer, size_t length);
  void (*free)(TfLiteContext *context, void *buffer);
  TfLiteStatus (*prepare)(TfLiteContext *context, TfLiteNode *node);
  TfLiteStatus (*invoke)(TfLiteContext *context, TfLiteNode *node);
  const char *(*profiling_string)(const TfLiteContext *context, const TfLiteNode *node);
  int32_t builtin_code;
  const char *custom_name;
  int version;
  /* Later runtimes add members (registration_external, async_kernel, inplace_operator): the
   * struct is passed by value, so it is padded with zeros (their "none") past all of them. */
  char zeros[256];
} TfLiteRegistration;

struct TfLiteDelegate;

struct TfLiteContext {
  size_t tensors_size;
  TfLiteStatus (*GetExecutionPlan)(TfLiteContext *context, TfLiteIntArray **execution_plan);
  TfLiteTensor *tensors;
  void *impl_;
  void *ResizeTensor;
  void (*ReportError)(TfLiteContext *context, const char *msg, ...);
  void *AddTensors;
  TfLiteStatus (*GetNodeAndRegistration)(TfLiteContext *context, int node_index,
                                         TfLiteNode **node, TfLiteRegistration **registration);
  TfLiteStatus (*ReplaceNodeSubsetsWithDelegateKernels)(TfLiteContext *context,
                                                        TfLiteRegistration registration,
                                                        const TfLiteIntArray *nodes_to_replace,
                                                        struct TfLiteDelegate *delegate);
  /* more members follow */
};

typedef struct {
  struct TfLiteDelegate *delegate;
  TfLiteIntArray *nodes_to_replace;
  TfLiteIntArray *input_tensors;
  TfLiteIntArray *output_tensors;
} TfLiteDelegateParams;

typedef struct TfLiteDelegate {
  void *data_;
  TfLiteStatus (*Prepare)(TfLiteContext *context, struct TfLiteDelegate *delegate);
  TfLiteStatus (*CopyFromBufferHandle)(TfLiteContext *, struct TfLiteDelegate *,
                                       TfLiteBufferHandle, TfLiteTensor *);
  TfLiteStatus (*CopyToBufferHandle)(TfLiteContext *, struct TfLiteDelegate *,
                                     TfLiteBufferHandle, TfLiteTensor *);
  void (*FreeBufferHandle)(TfLiteContext *, struct TfLiteDelegate *, TfLiteBufferHandle *);
  int64_t flags;
  void *opaque_delegate_builder;
} TfLiteDelegate;

typedef struct {
  char record_file[4096];
  int fail_prepare;
  int crash;
  int hang;
  long sleep_ms;
  long hang_after; /* < 0: claim no node */
  long invokes;
  int in_tensor, out_tensor; /* of the claimed QUANTIZE node */
  int conv_last;             /* conv=last; -1: another value */
  int corrupt;               /* CORRUPT_*; -1: corrupt given, an unknown mode */
  int corrupt_given;
  long corrupt_after;
  struct Conv *pending;      /* made by Prepare, taken by conv_kernel_init */
} State;

enum { CORRUPT_NONE = 0, CORRUPT_ZEROS, CORRUPT_SHIFT };

static void record_line(const State *s, const char *line) {
  if (!s->record_file[0]) return;
  FILE *f = fopen(s->record_file, "a");
  if (!f) return;
  fprintf(f, "%s\n", line);
  fclose(f);
}

static size_t elements(const TfLiteTensor *t) {
  size_t n = 1;
  for (int i = 0; t->dims && i < t->dims->size; i++) n *= (size_t)t->dims->data[i];
  return t->dims ? n : 0;
}

static int is_8bit(const TfLiteTensor *t) {
  return t->type == kTfLiteUInt8 || t->type == kTfLiteInt8;
}

/* The delegate kernel: the claimed QUANTIZE node, computed here (8-bit in, 8-bit out). */
static void *kernel_init(TfLiteContext *context, const char *buffer, size_t length) {
  (void)context;
  (void)length;
  const TfLiteDelegateParams *params = (const TfLiteDelegateParams *)buffer;
  return params->delegate->data_;
}

static TfLiteStatus kernel_invoke(TfLiteContext *context, TfLiteNode *node) {
  State *s = (State *)node->user_data;
  s->invokes++;
  if (s->invokes > s->hang_after) {
    fprintf(stderr, "recording delegate: invoke %ld blocks forever (hang_after=%ld)\n",
            s->invokes, s->hang_after);
    fflush(stderr);
    record_line(s, "hang");
    for (;;) pause();
  }
  const TfLiteTensor *in = &context->tensors[s->in_tensor];
  const TfLiteTensor *out = &context->tensors[s->out_tensor];
  if (in->bytes != out->bytes || !in->data || !out->data) return kTfLiteError;
  const double ratio = (double)in->params.scale / (double)out->params.scale;
  const int lo = out->type == kTfLiteInt8 ? -128 : 0, hi = out->type == kTfLiteInt8 ? 127 : 255;
  for (size_t i = 0; i < in->bytes; i++) {
    int x = in->type == kTfLiteInt8 ? ((const int8_t *)in->data)[i]
                                     : ((const uint8_t *)in->data)[i];
    double v = (x - in->params.zero_point) * ratio; /* rounded half away from zero */
    long q = (long)(v < 0 ? v - 0.5 : v + 0.5) + out->params.zero_point;
    q = q < lo ? lo : q > hi ? hi : q;
    if (out->type == kTfLiteInt8)
      ((int8_t *)out->data)[i] = (int8_t)q;
    else
      ((uint8_t *)out->data)[i] = (uint8_t)q;
  }
  return kTfLiteOk;
}

static TfLiteStatus claim_quantize(TfLiteContext *context, TfLiteDelegate *delegate) {
  State *s = (State *)delegate->data_;
  TfLiteIntArray *plan;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  for (int i = 0; i < plan->size; i++) {
    TfLiteNode *node;
    TfLiteRegistration *reg;
    int index = plan->data[i];
    if (context->GetNodeAndRegistration(context, index, &node, &reg) != kTfLiteOk)
      return kTfLiteError;
    if (reg->builtin_code != kTfLiteBuiltinQuantize || node->inputs->size != 1 ||
        node->outputs->size != 1)
      continue;
    const TfLiteTensor *in = &context->tensors[node->inputs->data[0]];
    const TfLiteTensor *out = &context->tensors[node->outputs->data[0]];
    if (!is_8bit(in) || !is_8bit(out) || in->params.scale <= 0 || out->params.scale <= 0)
      continue;
    if (elements(in) != in->bytes || elements(out) != out->bytes) {  /* another struct layout */
      context->ReportError(context, "recording delegate: this runtime's TfLiteTensor differs");
      return kTfLiteError;
    }
    s->in_tensor = node->inputs->data[0];
    s->out_tensor = node->outputs->data[0];
    TfLiteRegistration kernel;
    memset(&kernel, 0, sizeof kernel);
    kernel.init = kernel_init;
    kernel.invoke = kernel_invoke;
    kernel.builtin_code = kTfLiteBuiltinDelegate;
    kernel.custom_name = "recording_delegate";
    kernel.version = 1;
    struct {
      int size;
      int data[1];
    } nodes = {1, {index}};
    record_line(s, "claimed quantize");
    return context->ReplaceNodeSubsetsWithDelegateKernels(
        context, kernel, (const TfLiteIntArray *)&nodes, delegate);
  }
  context->ReportError(context, "recording delegate: hang_after needs a QUANTIZE node");
  return kTfLiteError;
}

/* conv=last: the last CONV_2D node, computed here like TFLite's reference kernels
 * (reference_integer_ops::ConvPerChannel, reference_ops::Conv), except that int8 results are
 * requantized like XNNPACK, the default CPU path (TFLite's fixed-point math differs from
 * XNNPACK in one step for ~0.05% of the elements; this way the result equals the CPU's). */
typedef struct Conv {
  int type; /* kTfLiteInt8 or kTfLiteFloat32, for all of input, filter and output */
  int corrupt;
  long corrupt_after, invokes; /* corrupt only invokes after the first corrupt_after */
  int in, filter, bias, out; /* tensor indices; bias < 0: none */
  int batches, in_h, in_w, in_c, out_h, out_w, out_c, k_h, k_w;
  int stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
  int32_t in_zp, out_zp, act_min, act_max; /* int8 */
  float f_min, f_max;                      /* float32 */
  float *scale; /* int8: in_scale * filter_scale[c] / out_scale per output channel */
} Conv;

static void conv_free(Conv *c) {
  if (!c) return;
  free(c->scale);
  free(c);
}

/* TfLiteRound; exact for the magnitudes used here */
static double round_away(double x) {
  return x < 0 ? -(double)(int64_t)(-x + 0.5) : (double)(int64_t)(x + 0.5);
}

/* TfLiteFloatArray was {int size; float data[];} and is {float *data; int size; bool owning;}
 * in newer runtimes. The old layout starts with the expected count followed by a positive
 * normal float (a scale); the new one with a pointer, whose high half read as a float is zero
 * or denormal on a 64-bit little-endian machine. NULL if neither layout holds `count`. */
static const float *affine_scales(const void *array, int count) {
  int size;
  float first;
  memcpy(&size, array, sizeof size);
  memcpy(&first, (const char *)array + sizeof(int), sizeof first);
  if (size == count && first >= FLT_MIN && first <= FLT_MAX)
    return (const float *)((const char *)array + sizeof(int));
  const float *data;
  memcpy(&data, array, sizeof data);
  memcpy(&size, (const char *)array + sizeof data, sizeof size);
  return size == count && data ? data : NULL;
}

static int32_t quantize_activation(float f, float scale, int32_t zero_point) {
  return zero_point + (int32_t)round_away((double)(f / scale));
}

static int dims4(const TfLiteTensor *t, int *d) {
  if (!t->dims || t->dims->size != 4) return 0;
  for (int i = 0; i < 4; i++)
    if ((d[i] = t->dims->data[i]) <= 0) return 0;
  return 1;
}

#define CONV_REFUSE(...)                                                        \
  do {                                                                          \
    context->ReportError(context, "recording delegate: conv=last " __VA_ARGS__); \
    conv_free(c);                                                               \
    return NULL;                                                                \
  } while (0)
#define CONV_SUPPORTS                                                                   \
  "supports int8 (per-tensor activations, symmetric per-channel or per-tensor int8 filter, " \
  "int32 bias) or float32 CONV_2D only, with activation none/relu/relu_n1_to_1/relu6"

/* Checks everything the kernel relies on; NULL (after ReportError) for anything else. */
static Conv *conv_describe(TfLiteContext *context, int index, const TfLiteNode *node,
                           int corrupt) {
  Conv *c = (Conv *)calloc(1, sizeof(Conv));
  if (!c) return NULL;
  c->corrupt = corrupt;
  const TfLiteConvParams *p = (const TfLiteConvParams *)node->builtin_data;
  if (!p || node->inputs->size < 2 || node->inputs->size > 3 || node->outputs->size != 1)
    CONV_REFUSE("node %d: unexpected inputs/outputs", index);
  c->in = node->inputs->data[0];
  c->filter = node->inputs->data[1];
  c->bias = node->inputs->size == 3 ? node->inputs->data[2] : -1;
  c->out = node->outputs->data[0];
  if (c->in < 0 || c->filter < 0 || c->out < 0) CONV_REFUSE("node %d: missing tensor", index);
  const TfLiteTensor *in = &context->tensors[c->in];
  const TfLiteTensor *f = &context->tensors[c->filter];
  const TfLiteTensor *b = c->bias >= 0 ? &context->tensors[c->bias] : NULL;
  const TfLiteTensor *out = &context->tensors[c->out];

  c->type = in->type;
  if ((c->type != kTfLiteInt8 && c->type != kTfLiteFloat32) || f->type != c->type ||
      out->type != c->type || (b && b->type != (c->type == kTfLiteInt8 ? kTfLiteInt32
                                                                      : kTfLiteFloat32)) ||
      f->sparsity || p->activation < kTfLiteActNone || p->activation > kTfLiteActRelu6)
    CONV_REFUSE(CONV_SUPPORTS " (node %d: types %d/%d/%d/%d, activation %d)", index, in->type,
                f->type, b ? b->type : -1, out->type, p->activation);
  const size_t esize = c->type == kTfLiteInt8 ? 1 : 4;
  if (elements(in) * esize != in->bytes || elements(f) * esize != f->bytes ||
      elements(out) * esize != out->bytes || (b && elements(b) * 4 != b->bytes))
    CONV_REFUSE("node %d: this runtime's TfLiteTensor differs", index);

  int di[4], df[4], dout[4];
  if (!dims4(in, di) || !dims4(f, df) || !dims4(out, dout))
    CONV_REFUSE("node %d: needs 4-D input, filter and output", index);
  c->batches = di[0], c->in_h = di[1], c->in_w = di[2], c->in_c = di[3];
  c->out_c = df[0], c->k_h = df[1], c->k_w = df[2];
  c->out_h = dout[1], c->out_w = dout[2];
  if (df[3] != c->in_c) CONV_REFUSE("node %d: grouped convolution unsupported", index);
  if (dout[0] != c->batches || dout[3] != c->out_c || (b && (int)elements(b) != c->out_c))
    CONV_REFUSE("node %d: inconsistent shapes", index);

  c->stride_h = p->stride_height, c->stride_w = p->stride_width;
  c->dil_h = p->dilation_height_factor, c->dil_w = p->dilation_width_factor;
  if (c->stride_h < 1 || c->stride_w < 1 || c->dil_h < 1 || c->dil_w < 1 ||
      (p->padding != kTfLitePaddingSame && p->padding != kTfLitePaddingValid))
    CONV_REFUSE("node %d: stride %dx%d, dilation %dx%d, padding %d unsupported", index,
                c->stride_h, c->stride_w, c->dil_h, c->dil_w, p->padding);
  /* TFLite's ComputeOutSize / ComputePaddingHeightWidth; the output shape must agree. */
  const int ek_h = (c->k_h - 1) * c->dil_h + 1, ek_w = (c->k_w - 1) * c->dil_w + 1;
  const int same = p->padding == kTfLitePaddingSame;
  const int oh = same ? (c->in_h + c->stride_h - 1) / c->stride_h
                      : (c->in_h - ek_h + c->stride_h) / c->stride_h;
  const int ow = same ? (c->in_w + c->stride_w - 1) / c->stride_w
                      : (c->in_w - ek_w + c->stride_w) / c->stride_w;
  if (oh != c->out_h || ow != c->out_w)
    CONV_REFUSE("node %d: output %dx%d, expected %dx%d", index, c->out_h, c->out_w, oh, ow);
  const int pad_h = (c->out_h - 1) * c->stride_h + ek_h - c->in_h;
  const int pad_w = (c->out_w - 1) * c->stride_w + ek_w - c->in_w;
  c->pad_top = pad_h > 0 ? pad_h / 2 : 0;
  c->pad_left = pad_w > 0 ? pad_w / 2 : 0;

  if (c->type == kTfLiteFloat32) {
    static const float lo[] = {-FLT_MAX, 0, -1, 0}, hi[] = {FLT_MAX, FLT_MAX, 1, 6};
    c->f_min = lo[p->activation];
    c->f_max = hi[p->activation];
    return c;
  }

  /* int8: per-tensor input and output, symmetric filter with scales along dimension 0. */
  const TfLiteAffineQuantization *fq = (const TfLiteAffineQuantization *)f->quantization.params;
  if (f->quantization.type != kTfLiteAffineQuantization || !fq || !fq->scale ||
      !fq->zero_point || in->params.scale <= 0 || out->params.scale <= 0)
    CONV_REFUSE(CONV_SUPPORTS " (node %d: not affine-quantized)", index);
  const int n_scales = fq->zero_point->size;
  const float *scales = affine_scales(fq->scale, n_scales);
  if (!scales || (n_scales != 1 && (n_scales != c->out_c || fq->quantized_dimension != 0)))
    CONV_REFUSE(CONV_SUPPORTS " (node %d: filter scales not per output channel)", index);
  for (int i = 0; i < n_scales; i++)
    if (fq->zero_point->data[i] != 0 || !(scales[i] > 0))
      CONV_REFUSE(CONV_SUPPORTS " (node %d: filter not symmetric)", index);
  c->in_zp = in->params.zero_point;
  c->out_zp = out->params.zero_point;
  c->scale = (float *)calloc((size_t)c->out_c, sizeof(float));
  if (!c->scale) CONV_REFUSE("out of memory");
  for (int oc = 0; oc < c->out_c; oc++) /* in float, as XNNPACK does */
    c->scale[oc] = in->params.scale * scales[n_scales == 1 ? 0 : oc] / out->params.scale;
  /* CalculateActivationRangeQuantized */
  const float s = out->params.scale;
  const int32_t zp = c->out_zp;
  c->act_min = -128, c->act_max = 127;
  if (p->activation == kTfLiteActRelu || p->activation == kTfLiteActRelu6) {
    int32_t q0 = quantize_activation(0, s, zp);
    c->act_min = q0 > c->act_min ? q0 : c->act_min;
  }
  if (p->activation == kTfLiteActRelu6) {
    int32_t q6 = quantize_activation(6, s, zp);
    c->act_max = q6 < c->act_max ? q6 : c->act_max;
  }
  if (p->activation == kTfLiteActReluN1To1) {
    int32_t qm1 = quantize_activation(-1, s, zp), q1 = quantize_activation(1, s, zp);
    c->act_min = qm1 > c->act_min ? qm1 : c->act_min;
    c->act_max = q1 < c->act_max ? q1 : c->act_max;
  }
  return c;
}

static void conv_int8(const Conv *c, const int8_t *in, const int8_t *filter, const int32_t *bias,
                      int8_t *out) {
  const int32_t in_offset = -c->in_zp;
  const float lo = (float)(c->act_min - c->out_zp), hi = (float)(c->act_max - c->out_zp);
  for (int n = 0; n < c->batches; n++)
    for (int oy = 0; oy < c->out_h; oy++)
      for (int ox = 0; ox < c->out_w; ox++) {
        const int iy0 = oy * c->stride_h - c->pad_top, ix0 = ox * c->stride_w - c->pad_left;
        int8_t *o = out + (((size_t)n * c->out_h + oy) * c->out_w + ox) * c->out_c;
        for (int oc = 0; oc < c->out_c; oc++) {
          int32_t acc = 0;
          for (int ky = 0; ky < c->k_h; ky++) {
            const int iy = iy0 + ky * c->dil_h;
            if (iy < 0 || iy >= c->in_h) continue; /* zero padding */
            for (int kx = 0; kx < c->k_w; kx++) {
              const int ix = ix0 + kx * c->dil_w;
              if (ix < 0 || ix >= c->in_w) continue;
              const int8_t *x = in + (((size_t)n * c->in_h + iy) * c->in_w + ix) * c->in_c;
              const int8_t *w = filter + (((size_t)oc * c->k_h + ky) * c->k_w + kx) * c->in_c;
              for (int ic = 0; ic < c->in_c; ic++) acc += (x[ic] + in_offset) * w[ic];
            }
          }
          if (bias) acc += bias[oc];
          /* XNNPACK's fp32 requantization: scale in float, clamp, round half to even (the
           * magic-number add; no libm), add the zero point */
          float v = (float)acc * c->scale[oc];
          v = v < lo ? lo : v > hi ? hi : v;
          o[oc] = (int8_t)((int32_t)((v + 12582912.0f) - 12582912.0f) + c->out_zp);
        }
      }
}

static void conv_float(const Conv *c, const float *in, const float *filter, const float *bias,
                       float *out) {
  for (int n = 0; n < c->batches; n++)
    for (int oy = 0; oy < c->out_h; oy++)
      for (int ox = 0; ox < c->out_w; ox++) {
        const int iy0 = oy * c->stride_h - c->pad_top, ix0 = ox * c->stride_w - c->pad_left;
        float *o = out + (((size_t)n * c->out_h + oy) * c->out_w + ox) * c->out_c;
        for (int oc = 0; oc < c->out_c; oc++) {
          float acc = 0;
          for (int ky = 0; ky < c->k_h; ky++) {
            const int iy = iy0 + ky * c->dil_h;
            if (iy < 0 || iy >= c->in_h) continue;
            for (int kx = 0; kx < c->k_w; kx++) {
              const int ix = ix0 + kx * c->dil_w;
              if (ix < 0 || ix >= c->in_w) continue;
              const float *x = in + (((size_t)n * c->in_h + iy) * c->in_w + ix) * c->in_c;
              const float *w = filter + (((size_t)oc * c->k_h + ky) * c->k_w + kx) * c->in_c;
              for (int ic = 0; ic < c->in_c; ic++) acc += x[ic] * w[ic];
            }
          }
          if (bias) acc += bias[oc];
          o[oc] = acc < c->f_min ? c->f_min : acc > c->f_max ? c->f_max : acc;
        }
      }
}

static void *conv_kernel_init(TfLiteContext *context, const char *buffer, size_t length) {
  (void)context;
  (void)length;
  State *s = (State *)((const TfLiteDelegateParams *)buffer)->delegate->data_;
  Conv *c = s->pending; /* owned by this node from now on */
  s->pending = NULL;
  return c;
}

static void conv_kernel_free(TfLiteContext *context, void *buffer) {
  (void)context;
  conv_free((Conv *)buffer);
}

static TfLiteStatus conv_kernel_invoke(TfLiteContext *context, TfLiteNode *node) {
  Conv *c = (Conv *)node->user_data;
  if (!c) return kTfLiteError;
  c->invokes++;
  const int corrupt = c->invokes > c->corrupt_after ? c->corrupt : CORRUPT_NONE;
  const TfLiteTensor *in = &context->tensors[c->in];
  const TfLiteTensor *f = &context->tensors[c->filter];
  const TfLiteTensor *b = c->bias >= 0 ? &context->tensors[c->bias] : NULL;
  const TfLiteTensor *out = &context->tensors[c->out];
  const size_t esize = c->type == kTfLiteInt8 ? 1 : 4;
  const size_t pixel = (size_t)c->out_c * esize;
  if (in->bytes != (size_t)c->batches * c->in_h * c->in_w * c->in_c * esize ||
      f->bytes != (size_t)c->out_c * c->k_h * c->k_w * c->in_c * esize ||
      out->bytes != (size_t)c->batches * c->out_h * c->out_w * pixel || !in->data ||
      !f->data || !out->data || (b && !b->data)) {
    context->ReportError(context, "recording delegate: conv tensors changed since Prepare");
    return kTfLiteError;
  }
  if (c->type == kTfLiteInt8)
    conv_int8(c, (const int8_t *)in->data, (const int8_t *)f->data,
              b ? (const int32_t *)b->data : NULL, (int8_t *)out->data);
  else
    conv_float(c, (const float *)in->data, (const float *)f->data,
               b ? (const float *)b->data : NULL, (float *)out->data);
  if (corrupt == CORRUPT_ZEROS) {
    if (c->type == kTfLiteInt8)
      memset(out->data, (int8_t)c->out_zp, out->bytes);
    else
      for (size_t i = 0; i < out->bytes / 4; i++) ((float *)out->data)[i] = 0.0f;
  } else if (corrupt == CORRUPT_SHIFT) {
    for (size_t row = 0; row < (size_t)c->batches * c->out_h; row++) {
      char *r = (char *)out->data + row * c->out_w * pixel;
      memmove(r + pixel, r, (size_t)(c->out_w - 1) * pixel);
    }
  }
  return kTfLiteOk;
}

static TfLiteStatus claim_conv(TfLiteContext *context, TfLiteDelegate *delegate) {
  State *s = (State *)delegate->data_;
  TfLiteIntArray *plan;
  if (context->GetExecutionPlan(context, &plan) != kTfLiteOk) return kTfLiteError;
  int index = -1;
  TfLiteNode *node = NULL;
  for (int i = 0; i < plan->size; i++) {
    TfLiteNode *n;
    TfLiteRegistration *reg;
    if (context->GetNodeAndRegistration(context, plan->data[i], &n, &reg) != kTfLiteOk)
      return kTfLiteError;
    if (reg->builtin_code == kTfLiteBuiltinConv2d) index = plan->data[i], node = n;
  }
  if (index < 0) {
    context->ReportError(context, "recording delegate: conv=last found no CONV_2D node");
    return kTfLiteError;
  }
  Conv *c = conv_describe(context, index, node, s->corrupt);
  if (!c) return kTfLiteError;
  c->corrupt_after = s->corrupt_after;
  conv_free(s->pending);
  s->pending = c;
  TfLiteRegistration kernel;
  memset(&kernel, 0, sizeof kernel);
  kernel.init = conv_kernel_init;
  kernel.free = conv_kernel_free;
  kernel.invoke = conv_kernel_invoke;
  kernel.builtin_code = kTfLiteBuiltinDelegate;
  kernel.custom_name = "recording_delegate";
  kernel.version = 1;
  struct {
    int size;
    int data[1];
  } nodes = {1, {index}};
  char line[64];
  snprintf(line, sizeof line, "claimed conv %d", index);
  record_line(s, line);
  TfLiteStatus status = context->ReplaceNodeSubsetsWithDelegateKernels(
      context, kernel, (const TfLiteIntArray *)&nodes, delegate);
  conv_free(s->pending); /* not taken if the runtime refused */
  s->pending = NULL;
  return status;
}

static TfLiteStatus prepare(TfLiteContext *context, TfLiteDelegate *delegate) {
  State *s = (State *)delegate->data_;
  record_line(s, "prepare");
  if (s->crash) raise(SIGSEGV);
  while (s->hang) pause();
  if (s->sleep_ms > 0) {
    struct timespec ts = {s->sleep_ms / 1000, (s->sleep_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
  }
  if (s->fail_prepare) return kTfLiteError;
  if (s->conv_last < 0) {
    context->ReportError(context, "recording delegate: conv supports conv=last only");
    return kTfLiteError;
  }
  if (s->corrupt < 0) {
    context->ReportError(context, "recording delegate: corrupt is zeros, shift or none");
    return kTfLiteError;
  }
  if (s->corrupt_given && !s->conv_last) {
    context->ReportError(context, "recording delegate: corrupt needs conv=last");
    return kTfLiteError;
  }
  if (s->conv_last && s->hang_after >= 0) {
    context->ReportError(context, "recording delegate: conv=last does not go with hang_after");
    return kTfLiteError;
  }
  if (s->conv_last) return claim_conv(context, delegate);
  return s->hang_after >= 0 ? claim_quantize(context, delegate) : kTfLiteOk;
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                              void (*report_error)(const char *)) {
  State *s = (State *)calloc(1, sizeof(State));
  int fail_create = 0;
  if (!s) return NULL;
  s->hang_after = -1;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "record_file") == 0)
      snprintf(s->record_file, sizeof s->record_file, "%s", values[i]);
    if (strcmp(keys[i], "sleep_ms") == 0) s->sleep_ms = strtol(values[i], NULL, 10);
    if (strcmp(keys[i], "hang_after") == 0) s->hang_after = strtol(values[i], NULL, 10);
    if (strcmp(keys[i], "corrupt_after") == 0) s->corrupt_after = strtol(values[i], NULL, 10);
    if (strcmp(keys[i], "conv") == 0) s->conv_last = strcmp(values[i], "last") == 0 ? 1 : -1;
    if (strcmp(keys[i], "corrupt") == 0) {
      s->corrupt_given = 1;
      s->corrupt = strcmp(values[i], "none") == 0    ? CORRUPT_NONE
                   : strcmp(values[i], "zeros") == 0 ? CORRUPT_ZEROS
                   : strcmp(values[i], "shift") == 0 ? CORRUPT_SHIFT
                                                     : -1;
    }
    if (strcmp(keys[i], "fail") == 0) {
      fail_create = strcmp(values[i], "create") == 0;
      s->fail_prepare = strcmp(values[i], "prepare") == 0;
      s->crash = strcmp(values[i], "crash") == 0;
      s->hang = strcmp(values[i], "hang") == 0;
    }
  }
  for (size_t i = 0; i < n; i++) {
    char line[8192];
    snprintf(line, sizeof line, "%s=%s", keys[i], values[i]);
    record_line(s, line);
  }
  if (fail_create) {
    if (report_error) report_error("recording delegate: asked to fail at create");
    free(s);
    return NULL;
  }
  TfLiteDelegate *d = (TfLiteDelegate *)calloc(1, sizeof(TfLiteDelegate));
  if (!d) {
    free(s);
    return NULL;
  }
  d->data_ = s;
  d->Prepare = prepare;
  return d;
}

void tflite_plugin_destroy_delegate(TfLiteDelegate *delegate) {
  if (!delegate) return;
  if (delegate->data_) conv_free(((State *)delegate->data_)->pending);
  free(delegate->data_);
  free(delegate);
}
