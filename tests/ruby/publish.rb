# Publishes events as the Ruby gem does (gem_layout.rb), with the `redis` gem.
#
#   ruby publish.rb REDIS_URL < events
#
# Each line of standard input is a JSON object {"channel": ..., "type": ..., "data": ...}; the
# id of each event is printed on its own line, in order.
require "json"
require_relative "gem_layout"

redis = Redis.new(url: ARGV.fetch(0))
$stdin.each_line do |line|
  event = JSON.parse(line)
  id = GemLayout.publish(redis, event.fetch("channel"), event.fetch("data"),
                         type: event.fetch("type", "message"))
  puts id
end
