/*
 * Minimal declarations of the wasmtime C API, enough to compile crun 1.8.1's
 * src/libcrun/handlers/wasmtime.c with `./configure --with-wasmtime`.
 *
 * Written for edge-provision (not copied from wasmtime's repository): the lab takes
 * libwasmtime from the PyPI `wasmtime` wheel, which ships `_libwasmtime.so` but no C
 * headers. Every declaration below was derived from that wheel's ctypes bindings
 * (`wasmtime/_bindings.py`) of the version pinned in edge_provision/artifacts/versions.yml.
 *
 * crun 1.8.1 does not link against libwasmtime: it dlopen()s "libwasmtime.so" when a
 * Wasm container starts and dlsym()s each function into a function pointer whose type it
 * declares itself. So this header only has to provide
 *   - the type names crun's own declarations use, and
 *   - complete layouts for the two structs crun allocates itself (wasm_byte_vec_t and
 *     wasmtime_func_t), which libwasmtime writes into and which must therefore match the
 *     pinned version exactly.
 * The function prototypes are declared too (as documentation of the pinned ABI, and so
 * tests/unit/test_crun_builder.py can check none is missing); crun shadows them with its
 * local function pointers of the same name.
 *
 * The builder installs this file as wasmtime_c_api.h and adds three one-line shims,
 * wasm.h, wasi.h and wasmtime.h, which crun's handler and configure check include.
 *
 * ABI notes for the pinned version (wasmtime 20.0.0), checked against crun 1.8.1's calls:
 *   - wasi_config_preopen_dir(config, host_path, guest_path): 3 arguments, as crun calls
 *     it (wasmtime 27+ takes dir/file permission arguments; 50+ a bool).
 *   - wasi_config_set_argv(config, int argc, argv) returning void, as crun declares it
 *     (wasmtime 21+ takes size_t and returns bool).
 *   - wasmtime_func_t is { uint64_t store_id; size_t index; } (21+ renames the field).
 *   - wasi_config_new() takes no argument; crun passes one ("crun_wasi_program"), which
 *     the C calling convention lets the callee ignore.
 */
#ifndef EDGE_PROVISION_WASMTIME_C_API_H
#define EDGE_PROVISION_WASMTIME_C_API_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ---- wasm.h: the standard Wasm C API subset ------------------------------------------ */

typedef char wasm_byte_t;

typedef struct wasm_byte_vec_t {
  size_t size;
  wasm_byte_t *data;
} wasm_byte_vec_t;

typedef wasm_byte_vec_t wasm_name_t;

typedef struct wasm_engine_t wasm_engine_t;
typedef struct wasm_trap_t wasm_trap_t;

wasm_engine_t *wasm_engine_new (void);
void wasm_engine_delete (wasm_engine_t *engine);

void wasm_byte_vec_new_uninitialized (wasm_byte_vec_t *out, size_t size);
void wasm_byte_vec_delete (wasm_byte_vec_t *vec);

/* ---- wasi.h ---------------------------------------------------------------------------- */

typedef struct wasi_config_t wasi_config_t;

wasi_config_t *wasi_config_new (void);
void wasi_config_set_argv (wasi_config_t *config, int argc, const char *argv[]);
void wasi_config_inherit_argv (wasi_config_t *config);
void wasi_config_inherit_env (wasi_config_t *config);
void wasi_config_inherit_stdin (wasi_config_t *config);
void wasi_config_inherit_stdout (wasi_config_t *config);
void wasi_config_inherit_stderr (wasi_config_t *config);
bool wasi_config_preopen_dir (wasi_config_t *config, const char *path, const char *guest_path);

/* ---- wasmtime.h ------------------------------------------------------------------------ */

typedef struct wasmtime_error wasmtime_error_t;
typedef struct wasmtime_store wasmtime_store_t;
typedef struct wasmtime_context wasmtime_context_t;
typedef struct wasmtime_linker wasmtime_linker_t;
typedef struct wasmtime_module wasmtime_module_t;
/* Opaque here: crun passes no arguments/results (NULL, 0) to wasmtime_func_call. */
typedef struct wasmtime_val wasmtime_val_t;

typedef struct wasmtime_func {
  uint64_t store_id;
  size_t index;
} wasmtime_func_t;

void wasmtime_error_message (const wasmtime_error_t *error, wasm_name_t *message);
void wasmtime_error_delete (wasmtime_error_t *error);

wasmtime_error_t *wasmtime_wat2wasm (const char *wat, size_t wat_len, wasm_byte_vec_t *out);

wasmtime_store_t *wasmtime_store_new (wasm_engine_t *engine, void *data, void (*finalizer) (void *));
wasmtime_context_t *wasmtime_store_context (wasmtime_store_t *store);
void wasmtime_store_delete (wasmtime_store_t *store);
wasmtime_error_t *wasmtime_context_set_wasi (wasmtime_context_t *context, wasi_config_t *wasi);

wasmtime_error_t *wasmtime_module_new (wasm_engine_t *engine, const uint8_t *wasm, size_t wasm_len,
                                       wasmtime_module_t **ret);
void wasmtime_module_delete (wasmtime_module_t *module);

wasmtime_linker_t *wasmtime_linker_new (wasm_engine_t *engine);
wasmtime_error_t *wasmtime_linker_define_wasi (wasmtime_linker_t *linker);
wasmtime_error_t *wasmtime_linker_module (wasmtime_linker_t *linker, wasmtime_context_t *store,
                                          const char *name, size_t name_len,
                                          const wasmtime_module_t *module);
wasmtime_error_t *wasmtime_linker_get_default (const wasmtime_linker_t *linker, wasmtime_context_t *store,
                                               const char *name, size_t name_len, wasmtime_func_t *func);

wasmtime_error_t *wasmtime_func_call (wasmtime_context_t *store, const wasmtime_func_t *func,
                                      const wasmtime_val_t *args, size_t nargs, wasmtime_val_t *results,
                                      size_t nresults, wasm_trap_t **trap);

#ifdef __cplusplus
}
#endif

#endif /* EDGE_PROVISION_WASMTIME_C_API_H */
