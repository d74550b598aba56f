// Strict JSON parsing and bounded printing (rules in json.hpp).
#include <d9d/mapper/json.hpp>

#include <algorithm>
#include <cctype>
#include <set>
#include <vector>

namespace d9d::mapper {

using d9d::detail::str_cat;
using Json = nlohmann::json;

JsonError::JsonError(std::string path, std::string detail)
    : ValueError(path + ": " + detail), path_(std::move(path)), detail_(std::move(detail)) {}

namespace {

// Drops a UTF-8 sequence that a cut left incomplete at the end of `s`, so a cut string stays
// valid UTF-8.
void drop_partial_utf8(std::string& s) {
  size_t lead = s.size();
  size_t continuations = 0;
  while (lead > 0 && continuations < 3 &&
         (static_cast<unsigned char>(s[lead - 1]) & 0xC0) == 0x80) {
    --lead;
    ++continuations;
  }
  if (lead == 0) return;
  const auto byte = static_cast<unsigned char>(s[lead - 1]);
  const size_t length = byte >= 0xF0 ? 4 : byte >= 0xE0 ? 3 : byte >= 0xC0 ? 2 : 1;
  if (length > 1 && continuations + 1 < length) s.resize(lead - 1);
}

// At most `max_chars` characters of `text`, then "..." when it was longer.
std::string cut(std::string text, size_t max_chars) {
  if (text.size() <= max_chars) return text;
  text.resize(max_chars);
  drop_partial_utf8(text);
  return text + "...";
}

// Writes compact JSON as dump() does, and stops once it holds more than max_chars characters.
// Every level of nesting writes a bracket before it descends, so the recursion is no deeper than
// max_chars + 1, and no more than max_chars + 1 characters of any string are escaped.
class Excerpt {
 public:
  explicit Excerpt(size_t max_chars) : max_chars_(max_chars) {}

  void value(const Json& j) {
    if (full()) return;
    if (j.is_array()) {
      out_ += '[';
      bool first = true;
      for (const Json& element : j) {
        if (full()) return;
        if (!first) out_ += ',';
        first = false;
        value(element);
      }
      out_ += ']';
    } else if (j.is_object()) {
      out_ += '{';
      bool first = true;
      for (auto it = j.begin(); it != j.end(); ++it) {
        if (full()) return;
        if (!first) out_ += ',';
        first = false;
        string(it.key());
        out_ += ':';
        value(it.value());
      }
      out_ += '}';
    } else if (j.is_string()) {
      string(j.get_ref<const std::string&>());
    } else if (j.is_number() || j.is_boolean() || j.is_null()) {
      out_ += j.dump();
    } else {
      out_ += str_cat("<", j.type_name(), ">");  // binary or discarded: parse_json makes neither
    }
  }

  void string(std::string_view text) {
    if (full()) return;
    const size_t room = max_chars_ + 1 - out_.size();
    if (text.size() > room) {
      text = text.substr(0, room);
      cut_ = true;
    }
    out_ += Json(std::string(text)).dump(-1, ' ', false, Json::error_handler_t::replace);
  }

  std::string take() && {
    if (!cut_ && out_.size() <= max_chars_) return std::move(out_);
    out_.resize(std::min(out_.size(), max_chars_));
    drop_partial_utf8(out_);
    return std::move(out_) + "...";
  }

 private:
  bool full() {
    if (out_.size() <= max_chars_) return false;
    cut_ = true;
    return true;
  }

  size_t max_chars_;
  std::string out_;
  bool cut_ = false;
};

}  // namespace

std::string json_excerpt(const Json& value, size_t max_chars) {
  Excerpt out(max_chars);
  out.value(value);
  return std::move(out).take();
}

std::string json_string_excerpt(std::string_view text, size_t max_chars) {
  Excerpt out(max_chars);
  out.string(text);
  return std::move(out).take();
}

std::string json_child_path(const std::string& path, std::string_view key) {
  const bool plain = !key.empty() && std::all_of(key.begin(), key.end(), [](char c) {
    return std::isalnum(static_cast<unsigned char>(c)) || c == '_';
  });
  if (plain) return str_cat(path, ".", key);
  return path + "[" + Json(std::string(key)).dump(-1, ' ', false, Json::error_handler_t::replace) +
         "]";
}

std::string json_child_path(const std::string& path, size_t index) {
  return str_cat(path, "[", index, "]");
}

Json parse_json(std::string_view text, size_t max_depth) {
  // The containers open at the current position, outermost first: the path of any value.
  struct Frame {
    bool object;
    std::set<std::string> keys;  // objects: the keys so far
    std::string key;             // objects: the current key
    size_t index = 0;            // arrays: the current element
    bool started = false;        // arrays: whether an element was seen
  };
  std::vector<Frame> frames;
  auto path = [&frames]() {
    std::string p = "$";
    for (const auto& f : frames) {
      if (f.object) {
        if (!f.key.empty()) p = json_child_path(p, f.key);
      } else if (f.started) {
        p = json_child_path(p, f.index);
      }
    }
    return p;
  };
  auto next_element = [&frames]() {
    if (frames.empty() || frames.back().object) return;
    Frame& f = frames.back();
    if (f.started) ++f.index;
    f.started = true;
  };
  auto open = [&](bool object) {
    next_element();
    // Checked before the container exists: the partial document that the exception destroys
    // is never deeper than max_depth.
    if (frames.size() >= max_depth) {
      throw JsonError(path(), str_cat("nested deeper than ", max_depth, " arrays and objects"));
    }
    frames.push_back(Frame{object, {}, {}, 0, false});
  };
  Json::parser_callback_t callback = [&](int, Json::parse_event_t event, Json& parsed) {
    switch (event) {
      case Json::parse_event_t::object_start:
        open(true);
        break;
      case Json::parse_event_t::array_start:
        open(false);
        break;
      case Json::parse_event_t::object_end:
      case Json::parse_event_t::array_end:
        frames.pop_back();
        break;
      case Json::parse_event_t::key: {
        Frame& f = frames.back();
        std::string key = parsed.get<std::string>();
        const bool fresh = f.keys.insert(key).second;
        f.key = std::move(key);
        if (!fresh) throw JsonError(path(), "duplicate key " + json_string_excerpt(f.key));
        break;
      }
      case Json::parse_event_t::value:
        next_element();
        break;
    }
    return true;
  };
  try {
    return Json::parse(text.begin(), text.end(), callback);
  } catch (const Json::parse_error& e) {
    // nlohmann's message ends with the token it last read, which may be a whole long string.
    throw JsonError("$", cut(str_cat("invalid JSON at byte ", e.byte, ": ", e.what()), 300));
  } catch (const Json::out_of_range& e) {  // a number beyond a double ("1e999"), without a byte
    throw JsonError("$", cut(str_cat("invalid JSON: ", e.what()), 300));
  }
}

}  // namespace d9d::mapper
