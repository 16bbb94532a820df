/*
 * A real TFLite external delegate for tests. It implements the plugin entry points that
 * tflite's load_delegate() looks for, records the options it is given, claims no nodes (so the
 * CPU kernels run the whole graph), and can be told to fail like broken vendor delegates do.
 *
 * Options:  record_file=PATH  append "key=value" lines, then "prepare" per Prepare() call
 *           fail=create       return NULL from create (load_delegate raises ValueError)
 *           fail=prepare      return an error from Prepare (the interpreter refuses it)
 *           fail=crash        SIGSEGV in Prepare (a broken vendor driver)
 *           fail=hang         block forever in Prepare (a wedged NPU)
 *           sleep_ms=N        take N ms in Prepare, then work (an NPU compiling its graph)
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
typedef struct TfLiteContext TfLiteContext;
typedef struct TfLiteTensor TfLiteTensor;
typedef int TfLiteBufferHandle;

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
} State;

static void record_line(const State *s, const char *line) {
  if (!s->record_file[0]) return;
  FILE *f = fopen(s->record_file, "a");
  if (!f) return;
  fprintf(f, "%s\n", line);
  fclose(f);
}

static TfLiteStatus prepare(TfLiteContext *context, TfLiteDelegate *delegate) {
  (void)context;
  State *s = (State *)delegate->data_;
  record_line(s, "prepare");
  if (s->crash) raise(SIGSEGV);
  while (s->hang) pause();
  if (s->sleep_ms > 0) {
    struct timespec ts = {s->sleep_ms / 1000, (s->sleep_ms % 1000) * 1000000L};
    while (nanosleep(&ts, &ts) != 0) {
    }
  }
  return s->fail_prepare ? kTfLiteError : kTfLiteOk; /* claims no nodes */
}

TfLiteDelegate *tflite_plugin_create_delegate(char **keys, char **values, size_t n,
                                              void (*report_error)(const char *)) {
  State *s = (State *)calloc(1, sizeof(State));
  int fail_create = 0;
  if (!s) return NULL;
  for (size_t i = 0; i < n; i++) {
    if (strcmp(keys[i], "record_file") == 0)
      snprintf(s->record_file, sizeof s->record_file, "%s", values[i]);
    if (strcmp(keys[i], "sleep_ms") == 0) s->sleep_ms = strtol(values[i], NULL, 10);
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
