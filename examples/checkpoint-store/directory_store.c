/* A checkpoint store plugin that keeps each key as a file in a directory:
 *
 *   custom:///path/to/libdirectory_store.so?dir=/var/lib/serve/checkpoints
 *
 * Key "ckpt/controller/state" is the file <dir>/ckpt/controller/state.value. The suffix keeps a
 * key and the folder of another apart ("a" is a.value, "a/b" is a/b.value). A put writes a
 * temporary file beside the value, fsyncs it, renames it over the value and fsyncs the
 * directory, so readers and crashes see the old value or the new one, never a torn one.
 *
 * The ABI is described in sdk/include/serve/checkpoint_store.h. This file is plain C99 plus
 * POSIX.1-2008 so that it doubles as a template for plugins in other languages.
 */
#define _POSIX_C_SOURCE 200809L

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "serve/checkpoint_store.h"

#define VALUE_SUFFIX ".value"
#define MAX_KEY_LENGTH 250

struct ServeStore {
  char* dir; /* absolute, without a trailing '/' */
};

static int fail(char* error, size_t error_size, const char* format, ...) {
  va_list args;
  va_start(args, format);
  if (error != NULL && error_size > 0) vsnprintf(error, error_size, format, args);
  va_end(args);
  return 1;
}

/* printf into a new malloc'd string; NULL when out of memory. */
static char* format_string(const char* format, ...) {
  va_list args;
  va_start(args, format);
  int size = vsnprintf(NULL, 0, format, args);
  va_end(args);
  if (size < 0) return NULL;
  char* text = malloc((size_t)size + 1);
  if (text == NULL) return NULL;
  va_start(args, format);
  vsnprintf(text, (size_t)size + 1, format, args);
  va_end(args);
  return text;
}

static int is_key_char(char c) {
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
         c == '_' || c == '-' || c == '/';
}

/* The host only sends valid keys; checking again keeps a bug there from escaping `dir`. */
static int check_key(const char* key, char* error, size_t error_size) {
  size_t length = strlen(key);
  if (length == 0 || length > MAX_KEY_LENGTH || key[0] == '/') {
    return fail(error, error_size, "invalid key '%.*s'", MAX_KEY_LENGTH, key);
  }
  const char* part = key;
  for (const char* p = key;; ++p) {
    if (*p != '\0' && !is_key_char(*p)) {
      return fail(error, error_size, "invalid character in key '%s'", key);
    }
    if (*p == '/' || *p == '\0') {
      size_t part_length = (size_t)(p - part);
      if (part_length == 0 || (part_length == 1 && part[0] == '.') ||
          (part_length == 2 && part[0] == '.' && part[1] == '.')) {
        return fail(error, error_size, "invalid key '%s': empty, '.' or '..' part", key);
      }
      if (*p == '\0') break;
      part = p + 1;
    }
  }
  return 0;
}

static int sync_directory(const char* path, char* error, size_t error_size) {
  int fd = open(path, O_RDONLY | O_DIRECTORY);
  if (fd < 0 || fsync(fd) != 0) {
    int saved = errno;
    if (fd >= 0) close(fd);
    return fail(error, error_size, "cannot sync the directory %s: %s", path, strerror(saved));
  }
  close(fd);
  return 0;
}

/* mkdir -p for the directories in `path` before its last '/', syncing the parent of each one it
 * creates so the new entry survives a crash. */
static int make_parents(const char* path, char* error, size_t error_size) {
  char* copy = format_string("%s", path);
  if (copy == NULL) return fail(error, error_size, "out of memory");
  char* last = strrchr(copy, '/');
  for (char* p = copy + 1; p != NULL && p <= last; p = strchr(p + 1, '/')) {
    if (*p != '/') continue;
    *p = '\0';
    if (mkdir(copy, 0755) == 0) {
      char* slash = strrchr(copy, '/');
      *slash = '\0';
      int synced = sync_directory(slash == copy ? "/" : copy, error, error_size);
      *slash = '/';
      if (synced != 0) {
        free(copy);
        return 1;
      }
    } else if (errno != EEXIST) {
      int saved = errno;
      fail(error, error_size, "cannot create the directory %s: %s", copy, strerror(saved));
      free(copy);
      return 1;
    }
    *p = '/';
  }
  free(copy);
  return 0;
}

static char* path_of(const ServeStore* store, const char* key) {
  return format_string("%s/%s" VALUE_SUFFIX, store->dir, key);
}

uint32_t serve_store_abi_version(void) { return SERVE_STORE_ABI_VERSION; }

ServeStore* serve_store_open(const ServeStoreParam* params, size_t count, char* error,
                             size_t error_size) {
  const char* dir = NULL;
  for (size_t i = 0; i < count; ++i) {
    if (strcmp(params[i].key, "dir") == 0) {
      dir = params[i].value;
    } else {
      fail(error, error_size,
           "the directory store does not know the parameter '%s'; it takes only "
           "dir=/absolute/path",
           params[i].key);
      return NULL;
    }
  }
  if (dir == NULL || dir[0] != '/') {
    fail(error, error_size,
         "the directory store needs an absolute directory: "
         "custom:///path/to/libdirectory_store.so?dir=/absolute/path%s%s",
         dir == NULL ? " (no dir parameter given)" : "; got dir=", dir == NULL ? "" : dir);
    return NULL;
  }
  ServeStore* store = malloc(sizeof(ServeStore));
  if (store == NULL) {
    fail(error, error_size, "out of memory");
    return NULL;
  }
  store->dir = format_string("%s", dir);
  if (store->dir == NULL) {
    free(store);
    fail(error, error_size, "out of memory");
    return NULL;
  }
  size_t length = strlen(store->dir);
  while (length > 1 && store->dir[length - 1] == '/') store->dir[--length] = '\0';
  /* Fail now, not at the first put, when the directory cannot be created or written. */
  char* probe = format_string("%s/.probe", store->dir);
  int unusable = probe == NULL || make_parents(probe, error, error_size) != 0;
  if (!unusable && access(store->dir, W_OK | X_OK) != 0) {
    fail(error, error_size, "cannot write in %s: %s", store->dir, strerror(errno));
    unusable = 1;
  }
  free(probe);
  if (unusable) {
    free(store->dir);
    free(store);
    return NULL;
  }
  return store;
}

void serve_store_close(ServeStore* store) {
  if (store == NULL) return;
  free(store->dir);
  free(store);
}

int serve_store_put(ServeStore* store, const char* key, const void* data, size_t size, char* error,
                    size_t error_size) {
  if (check_key(key, error, error_size) != 0) return 1;
  char* path = path_of(store, key);
  if (path == NULL) return fail(error, error_size, "out of memory");
  char* slash = strrchr(path, '/');
  *slash = '\0';
  char* temp = format_string("%s/.tmp-XXXXXX", path);
  char* parent = format_string("%s", path);
  *slash = '/';
  int result = 1;
  int fd = -1;
  if (temp == NULL || parent == NULL) {
    fail(error, error_size, "out of memory");
    goto done;
  }
  if (make_parents(path, error, error_size) != 0) goto done;
  fd = mkstemp(temp);
  if (fd < 0) {
    fail(error, error_size, "cannot create a temporary file in %s: %s", parent, strerror(errno));
    goto done;
  }
  const char* bytes = data;
  size_t left = size;
  while (left > 0) {
    ssize_t written = write(fd, bytes, left);
    if (written < 0) {
      if (errno == EINTR) continue;
      fail(error, error_size, "cannot write %s: %s", temp, strerror(errno));
      goto cleanup;
    }
    bytes += written;
    left -= (size_t)written;
  }
  if (fsync(fd) != 0) {
    fail(error, error_size, "cannot sync %s: %s", temp, strerror(errno));
    goto cleanup;
  }
  int closed = close(fd);
  fd = -1;
  if (closed != 0) {
    fail(error, error_size, "cannot write %s: %s", temp, strerror(errno));
    goto cleanup;
  }
  if (rename(temp, path) != 0) {
    fail(error, error_size, "cannot rename %s to %s: %s", temp, path, strerror(errno));
    goto cleanup;
  }
  result = sync_directory(parent, error, error_size);
  goto done;
cleanup:
  if (fd >= 0) close(fd);
  unlink(temp);
done:
  free(temp);
  free(parent);
  free(path);
  return result;
}

int serve_store_get(ServeStore* store, const char* key, ServeStoreValueFn on_value, void* context,
                    int* found, char* error, size_t error_size) {
  *found = 0;
  if (check_key(key, error, error_size) != 0) return 1;
  char* path = path_of(store, key);
  if (path == NULL) return fail(error, error_size, "out of memory");
  int fd = open(path, O_RDONLY);
  if (fd < 0) {
    int saved = errno;
    int result = 0;
    if (saved != ENOENT && saved != ENOTDIR) {
      result = fail(error, error_size, "cannot read %s: %s", path, strerror(saved));
    }
    free(path);
    return result;
  }
  struct stat info;
  char* buffer = NULL;
  size_t filled = 0;
  int result = 1;
  if (fstat(fd, &info) != 0) {
    fail(error, error_size, "cannot read %s: %s", path, strerror(errno));
    goto done;
  }
  buffer = malloc(info.st_size > 0 ? (size_t)info.st_size : 1);
  if (buffer == NULL) {
    fail(error, error_size, "out of memory reading %s", path);
    goto done;
  }
  while (filled < (size_t)info.st_size) {
    ssize_t n = read(fd, buffer + filled, (size_t)info.st_size - filled);
    if (n == 0) break; /* cannot happen: values are replaced by rename, never truncated */
    if (n < 0) {
      if (errno == EINTR) continue;
      fail(error, error_size, "cannot read %s: %s", path, strerror(errno));
      goto done;
    }
    filled += (size_t)n;
  }
  *found = 1;
  on_value(context, buffer, filled);
  result = 0;
done:
  free(buffer);
  close(fd);
  free(path);
  return result;
}

int serve_store_delete(ServeStore* store, const char* key, char* error, size_t error_size) {
  if (check_key(key, error, error_size) != 0) return 1;
  char* path = path_of(store, key);
  if (path == NULL) return fail(error, error_size, "out of memory");
  int result = 0;
  if (unlink(path) != 0) {
    if (errno != ENOENT && errno != ENOTDIR) {
      result = fail(error, error_size, "cannot delete %s: %s", path, strerror(errno));
    }
  } else {
    *strrchr(path, '/') = '\0';
    result = sync_directory(path, error, error_size);
  }
  free(path);
  return result;
}

/* Reports the values under <dir>/<relative> whose keys start with `prefix`. Returns 0, 1 on
 * error, or 2 when on_key asked to stop. */
static int walk(const ServeStore* store, const char* relative, const char* prefix,
                ServeStoreKeyFn on_key, void* context, char* error, size_t error_size) {
  char* path = relative[0] == '\0' ? format_string("%s", store->dir)
                                   : format_string("%s/%s", store->dir, relative);
  if (path == NULL) return fail(error, error_size, "out of memory");
  DIR* dir = opendir(path);
  if (dir == NULL) {
    int saved = errno;
    int result = saved == ENOENT || saved == ENOTDIR
                     ? 0
                     : fail(error, error_size, "cannot list %s: %s", path, strerror(saved));
    free(path);
    return result;
  }
  int result = 0;
  struct dirent* entry;
  while (result == 0 && (errno = 0, entry = readdir(dir)) != NULL) {
    const char* name = entry->d_name;
    if (name[0] == '.' && (name[1] == '\0' || (name[1] == '.' && name[2] == '\0'))) continue;
    char* child =
        relative[0] == '\0' ? format_string("%s", name) : format_string("%s/%s", relative, name);
    char* child_path = format_string("%s/%s", path, name);
    struct stat info;
    if (child == NULL || child_path == NULL) {
      result = fail(error, error_size, "out of memory");
    } else if (lstat(child_path, &info) != 0) {
      if (errno != ENOENT) {
        result = fail(error, error_size, "cannot list %s: %s", child_path, strerror(errno));
      }
    } else if (S_ISDIR(info.st_mode)) {
      result = walk(store, child, prefix, on_key, context, error, error_size);
    } else if (S_ISREG(info.st_mode)) {
      size_t length = strlen(child);
      size_t suffix = strlen(VALUE_SUFFIX);
      if (length > suffix && strcmp(child + length - suffix, VALUE_SUFFIX) == 0) {
        child[length - suffix] = '\0';
        if (strncmp(child, prefix, strlen(prefix)) == 0 && on_key(context, child) != 0) {
          result = 2;
        }
      }
    }
    free(child);
    free(child_path);
  }
  if (result == 0 && errno != 0) {
    result = fail(error, error_size, "cannot list %s: %s", path, strerror(errno));
  }
  closedir(dir);
  free(path);
  return result;
}

int serve_store_list(ServeStore* store, const char* prefix, ServeStoreKeyFn on_key, void* context,
                     char* error, size_t error_size) {
  /* Start at the deepest folder the prefix names: "blobs/sha256/ab" walks <dir>/blobs/sha256. */
  char* start = format_string("%s", prefix);
  if (start == NULL) return fail(error, error_size, "out of memory");
  char* slash = strrchr(start, '/');
  if (slash != NULL) {
    *slash = '\0';
  } else {
    start[0] = '\0';
  }
  int result = 0;
  if (start[0] != '\0' && check_key(start, error, error_size) != 0) {
    result = 1;
  } else {
    result = walk(store, start, prefix, on_key, context, error, error_size) == 1 ? 1 : 0;
  }
  free(start);
  return result;
}
