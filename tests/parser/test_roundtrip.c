/* test_roundtrip.c - every model.onnx of the ONNX test data ($NBL_TESTDATA/{node,simple,
 * pytorch-converted,pytorch-operator,real}) loads, verifies, saves and reloads to an
 * equal IR; so do the exported ResNet-18 files in $NBL_RESNET_DIR (inline and with
 * external data). Files listed in tests/parser/roundtrip_exceptions.txt are skipped. */
#include <check.h>
#include <dirent.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "ir/ir.h"
#include "nibble.h"

static char **exceptions;
static int n_exceptions;

static void load_exceptions(void) {
  const char *root = getenv("NBL_SOURCE_ROOT");
  char p[PATH_MAX];
  snprintf(p, sizeof p, "%s/tests/parser/roundtrip_exceptions.txt", root ? root : ".");
  FILE *f = fopen(p, "r");
  if (!f) return;
  char line[1024];
  while (fgets(line, sizeof line, f)) {
    char *hash = strchr(line, '#');
    if (hash) *hash = 0;
    char *tok = strtok(line, " \t\r\n");
    if (!tok) continue;
    exceptions = realloc(exceptions, sizeof(char *) * (size_t)(n_exceptions + 1));
    exceptions[n_exceptions++] = strdup(tok);
  }
  fclose(f);
}

static bool is_exception(const char *suite, const char *test) {
  char key[600];
  snprintf(key, sizeof key, "%s/%s", suite, test);
  for (int i = 0; i < n_exceptions; i++)
    if (strcmp(exceptions[i], key) == 0) return true;
  return false;
}

/* Load, save (into dir, mode), reload, compare. Returns true on success; prints why not. */
static bool roundtrip(const char *src, const char *dir, nbl_external_mode mode) {
  nbl_model *a = NULL, *b = NULL;
  char out[PATH_MAX + 32], why[2048];
  snprintf(out, sizeof out, "%s/model.onnx", dir);
  bool ok = false;
  nbl_save_options o = {.external = mode};
  if (nbl_model_load(src, &a)) {
    printf("FAIL load %s\n", nbl_last_error());
  } else if (nbl_model_verify(a)) {
    printf("FAIL verify %s\n", nbl_last_error());
  } else if (nbl_model_save(a, out, &o)) {
    printf("FAIL save %s: %s\n", src, nbl_last_error());
  } else if (nbl_model_load(out, &b)) {
    printf("FAIL reload %s: %s\n", src, nbl_last_error());
  } else if (!nbl_model_equal(a, b, why, sizeof why)) {
    printf("FAIL equal %s: %s\n", src, why);
  } else {
    ok = true;
  }
  nbl_model_free(a);
  nbl_model_free(b);
  return ok;
}

static char tmpdir[PATH_MAX];

START_TEST(test_testdata_roundtrip) {
  const char *td = getenv("NBL_TESTDATA");
  if (!td) td = "/usr/share/libonnx-testdata/data";
  load_exceptions();
  snprintf(tmpdir, sizeof tmpdir, "/tmp/nbl_rt_XXXXXX");
  ck_assert_ptr_nonnull(mkdtemp(tmpdir));
  const char *suites[] = {"node", "simple", "pytorch-converted", "pytorch-operator", "real"};
  int n = 0, passed = 0, failed = 0, skipped = 0;
  for (size_t s = 0; s < sizeof suites / sizeof suites[0]; s++) {
    char d[PATH_MAX];
    snprintf(d, sizeof d, "%s/%s", td, suites[s]);
    struct dirent **ents;
    int ne = scandir(d, &ents, NULL, alphasort);
    if (ne < 0) continue;
    for (int i = 0; i < ne; i++) {
      char p[PATH_MAX * 2];
      snprintf(p, sizeof p, "%s/%s/model.onnx", d, ents[i]->d_name);
      if (ents[i]->d_name[0] != '.' && access(p, R_OK) == 0) {
        if (is_exception(suites[s], ents[i]->d_name)) {
          skipped++;
        } else {
          n++;
          if (roundtrip(p, tmpdir, NBL_EXTERNAL_KEEP))
            passed++;
          else
            failed++;
        }
      }
      free(ents[i]);
    }
    free(ents);
  }
  char out[PATH_MAX + 32];
  snprintf(out, sizeof out, "%s/model.onnx", tmpdir);
  unlink(out);
  rmdir(tmpdir);
  printf("roundtrip: %d models, %d passed, %d failed (%d listed as exceptions)\n", n, passed,
         failed, skipped);
  for (int i = 0; i < n_exceptions; i++) free(exceptions[i]);
  free(exceptions);
  ck_assert_int_gt(n, 1000);
  ck_assert_int_eq(failed, 0);
}
END_TEST

START_TEST(test_resnet_roundtrip) {
  const char *rd = getenv("NBL_RESNET_DIR");
  if (!rd) {
    printf("resnet: NBL_RESNET_DIR not set, skipped\n");
    return;
  }
  const char *files[] = {"resnet18.onnx", "resnet18_ext.onnx"};
  for (int k = 0; k < 2; k++) {
    char src[PATH_MAX + 32];
    snprintf(src, sizeof src, "%s/%s", rd, files[k]);
    ck_assert_msg(access(src, R_OK) == 0, "%s missing", src);
    snprintf(tmpdir, sizeof tmpdir, "/tmp/nbl_rn_XXXXXX");
    ck_assert_ptr_nonnull(mkdtemp(tmpdir));
    ck_assert(roundtrip(src, tmpdir, NBL_EXTERNAL_KEEP));
    /* the external copy kept its data file beside the saved model */
    char data[PATH_MAX + 64];
    snprintf(data, sizeof data, "%s/resnet18_ext.onnx.data", tmpdir);
    ck_assert_int_eq(access(data, R_OK) == 0, k == 1);
    unlink(data);
    snprintf(data, sizeof data, "%s/model.onnx", tmpdir);
    unlink(data);
    rmdir(tmpdir);
  }
  /* inline and external copies hold identical weights */
  nbl_model *a, *b;
  char pa[PATH_MAX + 32], pb[PATH_MAX + 32];
  snprintf(pa, sizeof pa, "%s/%s", rd, files[0]);
  snprintf(pb, sizeof pb, "%s/%s", rd, files[1]);
  ck_assert_int_eq(nbl_model_load(pa, &a), NBL_OK);
  ck_assert_int_eq(nbl_model_load(pb, &b), NBL_OK);
  int n = 0;
  size_t bytes = 0;
  for (int i = 0; i < a->graph->n_initializers; i++) {
    const nbl_value *va = &a->graph->values[a->graph->initializers[i]];
    nbl_id j = nbl_graph_find(b->graph, va->name);
    ck_assert_int_ne(j, NBL_NONE);
    const nbl_tensor *ta = va->init, *tb = b->graph->values[j].init;
    ck_assert_uint_eq(ta->nbytes, tb->nbytes);
    ck_assert(memcmp(ta->data, tb->data, ta->nbytes) == 0);
    n++;
    bytes += ta->nbytes;
  }
  printf("resnet: %d initializers, %zu bytes identical inline vs external\n", n, bytes);
  ck_assert_int_gt(bytes, 40000000);
  nbl_model_free(a);
  nbl_model_free(b);
}
END_TEST

int main(void) {
  Suite *s = suite_create("roundtrip");
  TCase *tc = tcase_create("all");
  tcase_set_timeout(tc, 600);
  tcase_add_test(tc, test_testdata_roundtrip);
  tcase_add_test(tc, test_resnet_roundtrip);
  suite_add_tcase(s, tc);
  SRunner *sr = srunner_create(s);
  srunner_run_all(sr, CK_NORMAL);
  int failed = srunner_ntests_failed(sr);
  srunner_free(sr);
  return failed ? 1 : 0;
}
