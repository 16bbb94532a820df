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
 *           any other key     recorded only
 *
 * Build: gcc -shared -fPIC -O2 -o librecording_delegate.so recording_delegate.c
 * No TFLite headers needed: the structs below mirror tensorflow/lite/core/c/common.h.
 */
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

enum { kTfLiteUInt8 = 3, kTfLiteInt8 = 9 };
enum { kTfLiteBuiltinDelegate = 51, kTfLiteBuiltinQuantize = 114 };

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
} State;

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
  free(delegate->data_);
  free(delegate);
}
